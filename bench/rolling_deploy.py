"""Rolling deploys under sustained load: every failed request, and how long each step takes.

    .venv/bin/python bench/rolling_deploy.py [--short] [--clones 3] [--json] [--only-build]

Needs the lab up with the stack converged and the example shop deployed (`deploykit up`); it says
so and exits 2 when that is not the case. Then:

  a) builds four releases of examples/shop: A and B (the same code, distinct versions), BAD, a
     copy whose health endpoint answers 500, so that its canary never becomes healthy, and HUNG, a
     copy whose web module hangs at import on the nodes (gunicorn binds, never answers);
  b) deploys A without load (a known live release), beside the builds of the other three; then,
     each under load through the balancer after a steady phase: deploy B; deploy B again (the
     no-op); rollback (back to A); deploy BAD and deploy HUNG (expected: exit 1, every clone back
     on A);
  c) prints, per step, the command's exit code and wall time, the requests and failures (by kind)
     of the load, p50/p99 during the step against the steady phase, and the targets beside them.

The load: bench/loadgen.py, 8 keep-alive connections at 100 requests/s in all, a mix of what
the shop's users do (baked pages, product JSON, /me with a session kept by each worker, the health
path). Targets are printed, not asserted: it is a benchmark, and it exits 0 whenever it ran.
It leaves release A live. --only-build runs step a) alone (no lab needed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_cli import EXIT_RAN, Emit, NotRunnable, Out, run_bench
from docker.errors import DockerException
from loadgen import LoadGenerator, PhaseReport, Report, SessionLogin

from deploykit import lab, release
from deploykit.errors import DeploykitError
from deploykit.project import project_root

# --- targets (printed next to the figures, never asserted) -----------------------------------

TARGET_FAILURES = 0
TARGET_P99_RATIO = 2.0
#: A deploy of a built release to 3 clones (staged everywhere, the canary and two more switched):
#: 20 s (issue 11; the engine of many small tasks took 62-65 s).
TARGET_DEPLOY_SECONDS = 20.0
#: Re-deploying the live release must find nothing to do: the lock and one survey step per node.
TARGET_NOOP_SECONDS = 3.0
#: Back to the release before, kept on every node: no staging, three clones switched.
TARGET_ROLLBACK_SECONDS = 10.0
#: A release whose health path answers 500: its canary is returned within the health gate (30 s).
TARGET_BAD_SECONDS = 30.0
#: A release that hangs at import (gunicorn binds, never answers): the health gate's deadline holds
#: (short requests), and the hung process gets a short stop on the return.
TARGET_HUNG_SECONDS = 45.0

EXIT_FAILED = 1  # could not run: a build or the initial deploy failed
#: The longest one deploykit command may take before the bench gives up on it.
COMMAND_TIMEOUT = 900.0

# What the BAD release changes: the health endpoint's status, in examples/shop's web.py.
HEALTH_FILE = Path("src/shop/web.py")
HEALTH_LINE = "200 if healthy else 503,"
BAD_HEALTH_LINE = "500,  # bench/rolling_deploy.py: a release that never becomes healthy"
# What the HUNG release adds to the web module: on the nodes (where exec sets the release id, not
# at build time, whose bake must finish), its import never ends.
HUNG_LINES = (
    "\nimport os as _bench_os, time as _bench_time  # bench/rolling_deploy.py: HUNG\n"
    "if _bench_os.environ.get('DEPLOYKIT_RELEASE_ID'):\n"
    "    _bench_time.sleep(86400)\n"
)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


# --- running deploykit -------------------------------------------------------------------------


def json_objects(text: str) -> list[dict[str, Any]]:
    """Every JSON object in ``text``, in order: JSON lines, or objects pretty-printed over many
    lines (rich's print_json), with anything else between them skipped."""
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    at = text.find("{")
    while at != -1:
        try:
            value, end = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            at = text.find("{", at + 1)
            continue
        if isinstance(value, dict):
            found.append(value)
        at = text.find("{", end)
    return found


@dataclass
class Command:
    """One run of ``python -m deploykit ...``: what it printed, how it ended, how long it took."""

    argv: list[str]
    exit_code: int | None  # None: killed after COMMAND_TIMEOUT
    seconds: float
    objects: list[dict[str, Any]]
    stderr_tail: str

    @property
    def summary(self) -> dict[str, Any] | None:
        """The last JSON object printed (deploy and rollback: their summary)."""
        return self.objects[-1] if self.objects else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "argv": self.argv,
            "exit_code": self.exit_code,
            "seconds": round(self.seconds, 2),
            "summary": self.summary,
            "stderr_tail": self.stderr_tail,
        }


def deploykit(root: Path, *args: str) -> Command:
    argv = [sys.executable, "-m", "deploykit", *args]
    # No colours or terminal widths in what is parsed.
    env = {**os.environ, "NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200"}
    started = time.monotonic()
    try:
        done = subprocess.run(
            argv,
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,  # the exit code is a figure of the benchmark
        )
    except subprocess.TimeoutExpired as expired:
        stderr = expired.stderr.decode(errors="replace") if expired.stderr else ""
        stdout = expired.stdout.decode(errors="replace") if expired.stdout else ""
        return Command(
            argv[1:],
            None,
            time.monotonic() - started,
            json_objects(stdout),
            _tail(f"{stderr}\nkilled after {COMMAND_TIMEOUT:g} s"),
        )
    seconds = time.monotonic() - started
    return Command(
        argv[1:], done.returncode, seconds, json_objects(done.stdout), _tail(done.stderr)
    )


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _why(command: Command) -> str:
    ending = "timed out" if command.exit_code is None else f"exit {command.exit_code}"
    return f"`{' '.join(command.argv)}`: {ending}\n{command.stderr_tail}"


# --- the lab -----------------------------------------------------------------------------------


@dataclass
class Lab:
    balancer: str  # http://<address>
    clones: list[str]
    release: str | None  # what /healthz reports through the balancer


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"User-Agent": "deploykit-bench"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return int(answer.status), bytes(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def find_lab(root: Path, clones: int, health_path: str) -> Lab:
    """The lab's balancer, checked: it answers the health path with 200 and the lab has
    ``clones`` app clones. NotRunnable says what to do otherwise."""
    bring_up = f"bring it up with `deploykit up --app-clones {clones}` (or `make up`)"
    try:
        hosts = lab.status(root=root)
    except (DeploykitError, DockerException, OSError) as error:
        raise NotRunnable(f"cannot see the lab ({error}); {bring_up}") from None
    balancers = [h for h in hosts if "lb" in h.groups and h.state == "running" and h.address]
    if not balancers:
        raise NotRunnable(f"no lab is running (no balancer host); {bring_up}")
    app = [h.name for h in hosts if "app" in h.groups and h.state == "running"]
    if len(app) != clones:
        raise NotRunnable(
            f"the lab runs {len(app)} app clone(s) ({', '.join(app) or 'none'}), "
            f"--clones {clones} was asked: give --clones {len(app)}, or {bring_up}"
        )
    url = f"http://{balancers[0].address}"
    try:
        status, body = _get(url + health_path)
    except OSError as error:
        raise NotRunnable(f"{url}{health_path} does not answer ({error}); {bring_up}") from None
    if status != 200:
        raise NotRunnable(
            f"{url}{health_path} answers HTTP {status}: the stack is not converged or the shop "
            f"is not deployed; {bring_up}"
        )
    try:
        reported = json.loads(body).get("release")
    except (ValueError, AttributeError):
        reported = None
    return Lab(balancer=url, clones=app, release=reported if isinstance(reported, str) else None)


def nodes_of(status: dict[str, Any], group: str) -> list[dict[str, Any]]:
    nodes = status.get("nodes")
    if not isinstance(nodes, list):
        return []
    return [
        n
        for n in nodes
        if isinstance(n, dict) and (group in (n.get("groups") or []) or n.get("role") == group)
    ]


def fetch_status(root: Path) -> tuple[dict[str, Any] | None, Command]:
    command = deploykit(root, "status", "--json")
    status = command.summary if command.exit_code == 0 else None
    return status, command


# --- step a: the releases ------------------------------------------------------------------------


@dataclass
class Built:
    label: str
    version: str
    release_id: str
    path: Path
    size: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "version": self.version,
            "release_id": self.release_id,
            "path": str(self.path),
            "size": self.size,
            "seconds": round(self.seconds, 2),
        }


def build(root: Path, app: Path, label: str, version: str, out: Path) -> Built:
    command = deploykit(
        root, "build", "--app", str(app), "--version", version, "--out", str(out), "--json"
    )
    artifact = next((o for o in reversed(command.objects) if "path" in o), None)
    if command.exit_code != 0 or artifact is None:
        raise NotRunnable(f"building release {label} failed: {_why(command)}", EXIT_FAILED)
    return Built(
        label=label,
        version=version,
        release_id=str(artifact["release_id"]),
        path=Path(artifact["path"]),
        size=int(artifact.get("size", 0)),
        seconds=command.seconds,
    )


def copy_app(app: Path, copy: Path) -> Path:
    """A copy of the application's source, without build output or caches."""
    shutil.copytree(
        app,
        copy,
        ignore=shutil.ignore_patterns(
            "__pycache__", "*.pyc", "*.egg-info", ".venv", "venv", "build", "dist", ".*_cache"
        ),
    )
    return copy


def make_bad_copy(app: Path, into: Path) -> Path:
    """A copy of ``app`` whose health endpoint answers 500 whatever its checks say."""
    copy = copy_app(app, into / f"{app.name}-bad")
    health = copy / HEALTH_FILE
    text = health.read_text(encoding="utf-8")
    if text.count(HEALTH_LINE) != 1:
        raise NotRunnable(
            f"{app / HEALTH_FILE}: expected {HEALTH_LINE!r} once (the health endpoint's status); "
            "update HEALTH_LINE in bench/rolling_deploy.py to make the BAD release",
            EXIT_FAILED,
        )
    health.write_text(text.replace(HEALTH_LINE, BAD_HEALTH_LINE), encoding="utf-8")
    return copy


def make_hung_copy(app: Path, into: Path) -> Path:
    """A copy of ``app`` whose web module hangs at import on the nodes."""
    web = copy_app(app, into / f"{app.name}-hung") / HEALTH_FILE
    web.write_text(web.read_text(encoding="utf-8") + HUNG_LINES, encoding="utf-8")
    return into / f"{app.name}-hung"


def carries_bad_health(artifact: Path) -> bool:
    """Whether the artifact's source has the broken health endpoint (proof BAD is bad)."""
    with tarfile.open(artifact) as tar:
        member = tar.extractfile(f"source/{HEALTH_FILE.as_posix()}")
        return member is not None and BAD_HEALTH_LINE.encode() in member.read()


def build_releases(
    root: Path, app: Path, out: Path, say: Out, first_built: Callable[[Built], None] | None = None
) -> dict[str, Built]:
    """A, B, BAD and HUNG, one after another; FIRST_BUILT is called with A as soon as it is built
    (run() deploys it beside the other builds)."""
    with (app / "pyproject.toml").open("rb") as handle:
        base = str(tomllib.load(handle)["project"].get("version") or "0")
    # Fresh versions each run: deploy B uploads a release the nodes have never seen.
    stamp = time.strftime("%Y%m%d%H%M%S")
    built: dict[str, Built] = {}
    with tempfile.TemporaryDirectory(prefix="deploykit-bench-bad-") as scratch:
        sources = {
            "A": app,
            "B": app,
            "BAD": make_bad_copy(app, Path(scratch)),
            "HUNG": make_hung_copy(app, Path(scratch)),
        }
        for label, source in sources.items():
            version = f"{base}-bench{stamp}-{label.lower()}"
            say(f"build {label}: {version} from {source} ...")
            built[label] = build(root, source, label, version, out)
            say(
                f"  release {built[label].release_id}: {built[label].size / 1e6:.1f} MB "
                f"in {built[label].seconds:.1f} s"
            )
            if label == "A" and first_built is not None:
                first_built(built[label])
    if not carries_bad_health(built["BAD"].path):
        raise NotRunnable(f"{built['BAD'].path}: the health patch is not in it", EXIT_FAILED)
    return built


# --- step b: each command under load ----------------------------------------------------------


def shop_mix(app: Path, health_path: str) -> list[str | tuple[str, float]]:
    """What the shop's users ask for, by weight: the baked pages (served by the balancer's
    nginx), product documents (a clone, Redis, the docstore), their session (/me, from Redis)
    and the health path (a clone's dependency checks)."""
    catalogue = app / "src" / "shop" / "data" / "catalogue.json"
    try:
        products = list(json.loads(catalogue.read_text(encoding="utf-8"))["products"])
    except (OSError, ValueError, KeyError):
        products = [str(n) for n in range(1, 13)]
    mix: list[str | tuple[str, float]] = [
        ("/", 20),
        ("/catalogue/", 10),
        ("/products?limit=20", 10),
        ("/me", 20),
        (health_path, 5),
    ]
    mix += [(f"/products/{p}", 30 / len(products)) for p in products]
    return mix


@dataclass
class Step:
    name: str
    args: list[str]
    expect_exit: int
    expect_outcomes: tuple[str, ...]
    #: The release every clone runs after the step, as `deploykit status` reports it.
    expect_release: str
    target_seconds: float | None = None
    target_label: str = ""


@dataclass
class StepResult:
    step: Step
    command: Command
    load: Report
    status: dict[str, Any] | None
    checks: dict[str, bool | None] = field(default_factory=dict)

    @property
    def p99_ratio(self) -> float | None:
        during = self.load.phase("step").latency_ms.get("p99")
        steady = self.load.phase("steady").latency_ms.get("p99")
        return during / steady if during is not None and steady else None

    def to_dict(self) -> dict[str, Any]:
        ratio = self.p99_ratio
        return {
            "name": self.step.name,
            "command": self.command.to_dict(),
            "expected_exit": self.step.expect_exit,
            "expected_outcomes": list(self.step.expect_outcomes),
            "expected_release": self.step.expect_release,
            "target_seconds": self.step.target_seconds,
            "p99_ratio": None if ratio is None else round(ratio, 3),
            "checks": self.checks,
            "status": self.status,
            "load": self.load.to_dict(),
        }


@dataclass
class Settings:
    balancer: str
    mix: list[str | tuple[str, float]]
    concurrency: int
    rate: float
    timeout: float
    steady: float
    after: float


def under_load(root: Path, step: Step, settings: Settings, say: Out) -> StepResult:
    say(f"\n== {step.name}: deploykit {' '.join(step.args)}")
    load = LoadGenerator(
        settings.balancer,
        paths=settings.mix,
        concurrency=settings.concurrency,
        rate=settings.rate,
        timeout=settings.timeout,
        session=SessionLogin(),
        seed=step.name,
    )
    with load:
        load.phase("steady")
        time.sleep(settings.steady)
        load.phase("step")
        command = deploykit(root, *step.args)
        # Failures caused by the step can surface just after it returns (a check catching up).
        load.phase("after")
        time.sleep(settings.after)
    status, status_command = fetch_status(root)
    result = StepResult(step, command, load.report(), status)
    result.checks = judge(result, status_command)
    return result


def judge(result: StepResult, status_command: Command) -> dict[str, bool | None]:
    step, summary = result.step, result.command.summary or {}
    clones = nodes_of(result.status or {}, "app")
    ratio = result.p99_ratio
    return {
        "exit_code": result.command.exit_code == step.expect_exit,
        "outcome": summary.get("outcome") in step.expect_outcomes,
        "clones_on_expected_release": (
            (bool(clones) and all(n.get("release") == step.expect_release for n in clones))
            if status_command.exit_code == 0
            else None
        ),
        "no_drift": (result.status.get("drift") is False if result.status is not None else None),
        "zero_failures": result.load.failures <= TARGET_FAILURES,
        "p99_ratio": None if ratio is None else ratio <= TARGET_P99_RATIO,
        "wall_time": (
            None if step.target_seconds is None else result.command.seconds <= step.target_seconds
        ),
    }


def print_step(result: StepResult, say: Out) -> None:
    step, command, report = result.step, result.command, result.load
    summary = command.summary or {}
    ending = "timed out" if command.exit_code is None else f"exit {command.exit_code}"
    say(
        f"   {ending} (expected {step.expect_exit}: {_met(result.checks['exit_code'])}), "
        f"outcome {summary.get('outcome', '-')} "
        f"(expected {'/'.join(step.expect_outcomes)}: {_met(result.checks['outcome'])})"
    )
    timing = f"   wall time {command.seconds:.1f} s"
    if step.target_seconds is not None:
        timing += (
            f" (target <= {step.target_seconds:g} s, {step.target_label}: "
            f"{_met(result.checks['wall_time'])})"
        )
    say(timing)
    during = report.phase("step")
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(report.total.failures_by_kind.items()))
    say(
        f"   load: {report.total.requests} requests ({during.requests} during the step, "
        f"{during.rps:.0f}/s), failures {report.failures}{f' ({kinds})' if kinds else ''} "
        f"(target {TARGET_FAILURES}: {_met(result.checks['zero_failures'])}), "
        f"keep-alive retries {report.retries}"
    )
    say(f"   {'phase':<8} {'s':>6} {'requests':>9} {'failures':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for name in ("steady", "step", "after"):
        phase: PhaseReport = report.phase(name)
        say(
            f"   {name:<8} {phase.seconds:>6.1f} {phase.requests:>9} {phase.failures:>9} "
            f"{_ms(phase.latency_ms.get('p50')):>8} {_ms(phase.latency_ms.get('p99')):>8}"
        )
    ratio = result.p99_ratio
    say(
        f"   p99 step/steady {'-' if ratio is None else f'{ratio:.2f}'} "
        f"(target <= {TARGET_P99_RATIO:g}: {_met(result.checks['p99_ratio'])})"
    )
    for phase in report.phases:
        for sample in phase.examples:
            say(
                f"     failure [{phase.name}] t={sample.start:.2f} s {sample.method} "
                f"{sample.path}: {sample.failure}: {sample.detail}"
            )
    if result.status is None:
        say("   status: `deploykit status --json` gave nothing")
    else:
        clones = ", ".join(
            f"{n.get('host')} {n.get('release')} {n.get('haproxy') or ''}".rstrip()
            for n in nodes_of(result.status, "app")
        )
        say(
            f"   status: live {result.status.get('live')}, drift {result.status.get('drift')}; "
            f"{clones} (expected {step.expect_release}: "
            f"{_met(result.checks['clones_on_expected_release'])})"
        )
    for host, node in sorted((summary.get("nodes") or {}).items()):
        if isinstance(node, dict):
            message = f": {node.get('message')}" if node.get("message") else ""
            where = f" at {node['step']}" if node.get("step") else ""
            say(f"     {host}: {node.get('outcome')}{where}{message}")
    if command.exit_code != step.expect_exit and command.stderr_tail:
        say("   stderr (last lines):")
        for line in command.stderr_tail.splitlines():
            say(f"     {line}")


def print_summary(results: Sequence[StepResult], say: Out) -> None:
    say("\n== summary (targets: 0 failures, p99 step/steady <= 2, times as shown)")
    say(
        f"{'step':<28} {'exit':>5} {'wall s':>7} {'requests':>9} {'failures':>9} "
        f"{'p99 ratio':>10}  targets"
    )
    for result in results:
        ratio = result.p99_ratio
        missed = [k for k, ok in result.checks.items() if ok is False]
        say(
            f"{result.step.name:<28} {result.command.exit_code!s:>5} "
            f"{result.command.seconds:>7.1f} {result.load.total.requests:>9} "
            f"{result.load.failures:>9} {'-' if ratio is None else f'{ratio:.2f}':>10}  "
            + ("all met" if not missed else "MISSED: " + ", ".join(missed))
        )


# --- main --------------------------------------------------------------------------------------


def run(args: argparse.Namespace, say: Out, emit: Emit) -> int:
    root = project_root(Path(__file__).parent)
    app = (root / args.app).resolve()
    health_path = release.load_contract(app).health_path
    data: dict[str, Any] = {"app": str(app), "short": args.short, "clones": args.clones}

    found: Lab | None = None
    if not args.only_build:
        found = find_lab(root, args.clones, health_path)
        say(f"lab: balancer {found.balancer}, clones {', '.join(found.clones)}")
        say(f"     live release (through the balancer): {found.release}")
        status, command = fetch_status(root)
        if status is None:
            raise NotRunnable(f"`deploykit status --json` does not work here: {_why(command)}")
        data["lab"] = {"balancer": found.balancer, "clones": found.clones, "live": found.release}

    with (
        tempfile.TemporaryDirectory(prefix="deploykit-bench-") as temporary,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="deploy-a") as background,
    ):
        out = args.out.resolve() if args.out else Path(temporary)
        deploying_a: list[Future[Command]] = []

        def deploy_a(a: Built) -> None:
            # Untimed, so it runs beside the other three builds: the steps below start later by
            # the longer of the two, not by their sum (their build times include it).
            if found is not None:
                say(f"  deploy A ({a.release_id}) started, beside the other builds")
                command = ["deploy", "--artifact", str(a.path), "--json"]
                deploying_a.append(background.submit(deploykit, root, *command))

        say(f"\n== a) four releases of {app.name} into {out}")
        built = build_releases(root, app, out, say, first_built=deploy_a)
        data["build"] = {label: b.to_dict() for label, b in built.items()}
        if found is None:
            say("\n--only-build: done (the lab was not touched)")
            emit(data)
            return EXIT_RAN

        a, b, bad, hung = built["A"], built["B"], built["BAD"], built["HUNG"]
        say(f"\n== b) deploy A ({a.release_id}), untimed and without load")
        first = deploying_a[0].result()
        data["deploy_a"] = first.to_dict()
        if first.exit_code != 0:
            raise NotRunnable(f"the initial deploy of A failed: {_why(first)}", EXIT_FAILED)
        say(f"   done in {first.seconds:.1f} s (beside the builds of B, BAD and HUNG)")

        steps = [
            Step(
                "deploy B",
                ["deploy", "--artifact", str(b.path), "--json"],
                expect_exit=0,
                expect_outcomes=("succeeded",),
                expect_release=b.release_id,
                target_seconds=TARGET_DEPLOY_SECONDS,
                target_label=f"a built release to {args.clones} clone(s)",
            ),
            Step(
                "deploy B again (no-op)",
                ["deploy", "--artifact", str(b.path), "--json"],
                expect_exit=0,
                expect_outcomes=("succeeded", "unchanged"),
                expect_release=b.release_id,
                target_seconds=TARGET_NOOP_SECONDS,
                target_label="the live release again: a quick no-op",
            ),
            Step(
                "rollback (to A)",
                ["rollback", "--json"],
                expect_exit=0,
                expect_outcomes=("succeeded",),
                expect_release=a.release_id,
                target_seconds=TARGET_ROLLBACK_SECONDS,
                target_label="a kept release, nothing staged",
            ),
            Step(
                "deploy BAD (rolled back)",
                ["deploy", "--artifact", str(bad.path), "--json"],
                expect_exit=1,
                expect_outcomes=("rolled_back",),
                expect_release=a.release_id,
                target_seconds=TARGET_BAD_SECONDS,
                target_label="health 500: returned within the gate",
            ),
            Step(
                "deploy HUNG (rolled back)",
                ["deploy", "--artifact", str(hung.path), "--json"],
                expect_exit=1,
                expect_outcomes=("rolled_back",),
                expect_release=a.release_id,
                target_seconds=TARGET_HUNG_SECONDS,
                target_label="hangs at import: the deadline holds",
            ),
        ]
        settings = Settings(
            balancer=found.balancer,
            mix=shop_mix(app, health_path),
            concurrency=args.concurrency,
            rate=args.rate,
            timeout=args.timeout,
            steady=4.0 if args.short else 10.0,
            after=1.0 if args.short else 2.0,
        )
        data["load"] = {
            "concurrency": settings.concurrency,
            "rate": settings.rate,
            "timeout": settings.timeout,
            "steady_seconds": settings.steady,
            "after_seconds": settings.after,
            "mix": [[p, 1.0] if isinstance(p, str) else list(p) for p in settings.mix],
        }
        results: list[StepResult] = []
        for step in steps:
            result = under_load(root, step, settings, say)
            print_step(result, say)
            results.append(result)
        print_summary(results, say)
        data["steps"] = [r.to_dict() for r in results]
        data["targets_met"] = all(ok is not False for r in results for ok in r.checks.values())
    emit(data)
    return EXIT_RAN


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--short", action="store_true", help="steady phases of 4 s, not 10 s")
    parser.add_argument(
        "--clones", type=int, default=3, help="app clones the lab runs (checked; default 3)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object with it all")
    parser.add_argument(
        "--only-build", action="store_true", help="run step a) alone: build the four releases"
    )
    parser.add_argument(
        "--out", type=Path, help="keep the artifacts in this directory (default: a temporary one)"
    )
    parser.add_argument("--app", type=Path, default=Path("examples/shop"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--rate", type=float, default=100.0, help="requests/s, all workers (default 100)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=8, help="keep-alive connections (default 8)"
    )
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="per-request timeout, s (default 5)"
    )
    args = parser.parse_args(argv)
    return run_bench("rolling_deploy", args.json, lambda say, emit: run(args, say, emit))


if __name__ == "__main__":
    sys.exit(main())
