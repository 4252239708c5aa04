"""End-to-end fixtures: one lab per test run, shared by every e2e test, removed at the end."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import molecule_runs as molecule_scenarios
import pytest
from verify_skips import VERIFY_ACCOUNTING, terminal_lines

from deploykit import lab
from deploykit.errors import LabError
from deploykit.project import project_root

ROOT = project_root(Path(__file__).parent)

# The tests call ansible, ansible-playbook and molecule as a user would: from the virtualenv that
# runs pytest, whether or not it is activated.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


def _require_engine() -> None:
    """Skip (locally) or fail (in CI) when no Docker engine answers, naming what is missing."""
    try:
        lab.docker_client()
    except LabError as error:
        reason = f"needs a Docker engine: {error}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="session")
def lab_image() -> str:
    """The lab's base image (built offline on first use); molecule scenarios run on it too."""
    _require_engine()
    return lab.ensure_image(log=print)


def _remove_a_stale_lab() -> None:
    """A lab already there (a run that was killed before its teardown, or a developer's) is
    removed first, unless DEPLOYKIT_KEEP_LAB is set: its nodes may be in any state (a clone in
    maint, a stopped database), and the tests assume a lab that only this run has touched."""
    if not os.environ.get("DEPLOYKIT_KEEP_LAB") and lab.status(root=ROOT):
        print("e2e: removing the lab a previous run left (set DEPLOYKIT_KEEP_LAB=1 to reuse it)")
        lab.down(root=ROOT, log=print)
    if not lab.status(root=ROOT):
        # A new lab: its first converge is still to come, and will be kept (FIRST_CONVERGE).
        shutil.rmtree(FIRST_CONVERGE, ignore_errors=True)
        _first_converge_pending[0] = True


@pytest.fixture(scope="session")
def lab_up(request: pytest.FixtureRequest, lab_image: str) -> Iterator[lab.LabUpResult]:
    """The default lab (full profile), created once per run; `lab down` runs at the end even
    when a test fails, so no run leaves containers behind (DEPLOYKIT_KEEP_LAB=1 keeps it). When
    the run needs the shop deployed, the lab is already coming up (EarlyUp): waited for here."""
    keep = bool(os.environ.get("DEPLOYKIT_KEEP_LAB"))
    early = request.config.stash.get(EARLY_UP, None)
    if early is not None:
        early.wait()
    else:
        _remove_a_stale_lab()
    result = lab.up(lab.LabSpec(), root=ROOT, log=print)
    yield result
    if keep:  # a developer's re-runs: keep the lab for the next
        return
    lab.down(root=ROOT, log=print)
    shutil.rmtree(FIRST_CONVERGE, ignore_errors=True)


# The first converge of a lab this session created (the first `deploykit up` or `provision`): its
# output and ansible-runner's run directories, kept for test_security_matrix.py's secrets scan
# (the runner keeps only its last KEEP_RUNS runs, and the tests after it make many). Root-only, as
# .cache/runs is; removed with the lab. record.json: {"command", "started", "ended", "runs"}.
FIRST_CONVERGE = ROOT / ".cache" / "e2e-first-converge"
_first_converge_pending = [False]


def deploykit(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """`deploykit ARGS` as a user runs it. When it is the new lab's first converge, its output and
    run directories are kept in FIRST_CONVERGE."""
    first = _first_converge_pending[0]
    _first_converge_pending[0] = False
    before, started = _runs(), time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "deploykit", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    if first:
        _keep_first_converge(args, before, started, proc.stdout + proc.stderr)
    return proc


def _runs() -> set[Path]:
    runs = ROOT / ".cache" / "runs"
    return set(runs.iterdir()) if runs.is_dir() else set()


def _keep_first_converge(
    args: tuple[str, ...], before: set[Path], started: float, output: str
) -> None:
    made = sorted(_runs() - before)
    FIRST_CONVERGE.mkdir(mode=0o700, parents=True, exist_ok=True)
    for run in made:
        shutil.copytree(run, FIRST_CONVERGE / run.name, symlinks=True)
    (FIRST_CONVERGE / "output.txt").write_text(output)
    record = {
        "command": f"deploykit {' '.join(args)}",
        "started": started,
        "ended": time.time(),
        "runs": [run.name for run in made],
    }
    (FIRST_CONVERGE / "record.json").write_text(json.dumps(record))


class EarlyUp:
    """`deploykit up` (the lab, site.yml, the shop built and deployed), started as soon as pytest
    has collected a run that needs it, so that the lab comes up beside the unit tests instead of
    after them; the `shop` fixture takes its result. A process of its own, not a thread: the
    unit tests patch deploykit's modules in this one."""

    ARGS = ("up",)
    TIMEOUT = 2400

    def __init__(self) -> None:
        _remove_a_stale_lab()
        self.first = _first_converge_pending[0]
        _first_converge_pending[0] = False
        self.before, self.started = _runs(), time.time()
        # Read and closed by wait(); unlinked already (the output may name the lab's addresses).
        self.output = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "deploykit", *self.ARGS],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=self.output, stderr=subprocess.STDOUT,
            text=True, start_new_session=True,
        )  # fmt: skip
        self.result: subprocess.CompletedProcess[str] | None = None

    def wait(self) -> subprocess.CompletedProcess[str]:
        if self.result is None:
            left = self.started + self.TIMEOUT - time.time()
            try:
                rc = self.proc.wait(timeout=max(1.0, left))
            except subprocess.TimeoutExpired:
                self.stop()
                rc = self.proc.returncode
            self.output.seek(0)
            text = self.output.read()
            self.output.close()
            if self.first:
                _keep_first_converge(self.ARGS, self.before, self.started, text)
            self.result = subprocess.CompletedProcess(["deploykit", *self.ARGS], rc, text, "")
        return self.result

    def stop(self) -> None:
        """Ended with its process group (ansible-playbook and its workers), when still running."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


EARLY_UP = pytest.StashKey[EarlyUp]()


def _needs_the_shop(session: pytest.Session) -> bool:
    return any("shop" in getattr(item, "fixturenames", ()) for item in session.items)


def _selected_scenarios(session: pytest.Session) -> set[str]:
    return {
        item.callspec.params["scenario"]
        for item in session.items
        if isinstance(item, pytest.Function) and item.originalname == "test_molecule_scenario"
    }


MOLECULE_POOL = pytest.StashKey[molecule_scenarios.Pool]()


def pytest_collection_finish(session: pytest.Session) -> None:
    """The selected scenarios (-k applies) start once the run's tests are known, before the first
    unit test: one at a time beside every other test (molecule_runs.py), on the lab's base
    image. Without an engine nothing starts here: the scenarios' tests say why (lab_image)."""
    scenarios = _selected_scenarios(session)
    if session.config.option.collectonly or not (scenarios or _needs_the_shop(session)):
        return
    try:
        lab.ensure_image(log=print)
    except LabError:
        return
    if scenarios:
        _start_pool(session)
    if _needs_the_shop(session):
        session.config.stash[EARLY_UP] = EarlyUp()


def _start_pool(session: pytest.Session) -> molecule_scenarios.Pool:
    reports = Path(tempfile.mkdtemp(prefix="deploykit-molecule-verify-"))
    pool = molecule_scenarios.Pool(_selected_scenarios(session), reports)
    session.config.stash[MOLECULE_POOL] = pool
    return pool


def pytest_sessionfinish(session: pytest.Session) -> None:
    early = session.config.stash.get(EARLY_UP, None)
    if early is not None and early.result is None:
        # No test took the lab (interrupted, or every lab test deselected on the way): it goes.
        early.stop()
        if not os.environ.get("DEPLOYKIT_KEEP_LAB"):
            lab.down(root=ROOT, log=print)
            shutil.rmtree(FIRST_CONVERGE, ignore_errors=True)
    pool = session.config.stash.get(MOLECULE_POOL, None)
    if pool is not None:
        pool.shutdown()
        shutil.rmtree(pool.reports, ignore_errors=True)


@pytest.fixture(scope="session")
def molecule_pool(request: pytest.FixtureRequest) -> molecule_scenarios.Pool:
    """The scenarios' pool: started after collection, or now (the engine was missing then:
    lab_image skips or fails naming it)."""
    request.getfixturevalue("lab_image")
    pool = request.config.stash.get(MOLECULE_POOL, None)
    return pool if pool is not None else _start_pool(request.session)


@pytest.fixture(scope="session")
def molecule_reports(molecule_pool: molecule_scenarios.Pool) -> Path:
    """Where each scenario's verify writes its JUnit report (SCENARIO.xml)."""
    return molecule_pool.reports


@pytest.fixture(scope="session")
def molecule_runs(molecule_pool: molecule_scenarios.Pool) -> molecule_scenarios.Runs:
    """The scenarios' runs, for test_molecule.py's tests (after every other test): from the
    first that asks, the pool runs JOBS scenarios at a time; each test waits for its own."""
    return molecule_pool.all_slots()


@pytest.fixture(scope="session")
def site_converged(lab_up: lab.LabUpResult) -> dict[str, object]:
    """site.yml converged once on the shared lab by `deploykit provision --json`; its recap."""
    return provision()


def provision(*extra: str) -> dict[str, object]:
    """Run `deploykit provision --json`; return the final recap line, checked for shape."""
    proc = deploykit("provision", "--json", *extra, timeout=1800)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert lines, f"no JSON output; stderr:\n{proc.stderr[-3000:]}"
    recap: dict[str, object] = lines[-1]
    assert recap["event"] == "recap"
    assert proc.returncode == (0 if recap["status"] == "successful" else 1)
    return recap


@pytest.fixture(scope="session")
def shop(request: pytest.FixtureRequest, lab_up: lab.LabUpResult) -> str:
    """The whole stack with examples/shop deployed by `deploykit up` (once per run); the balancer's
    URL."""
    early = request.config.stash.get(EARLY_UP, None)
    proc = early.wait() if early is not None else deploykit("up", timeout=EarlyUp.TIMEOUT)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    assert "ok health" in output and "ok home page" in output
    balancer = next(h for h in lab_up.hosts if "lb" in h.groups)
    return f"http://{balancer.address}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `lab_teardown` tear the shared lab down: they run after every other test.
    The benches run after every other lab test: they deploy releases of their own and take
    minutes, so every other test has reported first (and sees the release `deploykit up`
    deployed). Then test_molecule.py's tests wait for the scenarios still running. The benches
    do not wait for the scenarios (that cost CI three minutes): their figures in CI have a
    scenario beside them, at a lower CPU priority; CI asserts what they do, never their times.
    The ha tests (test_ha.py) build a lab of their own, once the default lab is gone."""

    def rank(item: pytest.Item) -> int:
        # The ha lab replaces the default lab: after everything that uses it, its teardown too.
        if item.get_closest_marker("ha"):
            return 4
        if item.get_closest_marker("lab_teardown"):
            return 3
        if item.get_closest_marker("molecule"):
            return 2
        return 1 if item.get_closest_marker("bench") else 0

    items.sort(key=rank)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "lab_teardown: removes the shared lab; runs last")
    meter = config.stash[BUSY_METER] = _BusyMeter()
    config.pluginmanager.register(meter, "deploykit-busy-meter")


def _skip_accounting(terminalreporter: pytest.TerminalReporter) -> None:
    """The skip accounting of every molecule scenario's verify that ran (test_molecule.py): shown
    even when every scenario passed, so that no skip of a verify is invisible in CI's output."""
    accountings = terminalreporter.config.stash.get(VERIFY_ACCOUNTING, [])
    if accountings:
        terminalreporter.write_sep("=", "molecule verify: tests run and skipped, by scenario")
        for line in terminal_lines(accountings):
            terminalreporter.write_line(line)


def _part(nodeid: str) -> str:
    """A test's part of the run: unit, molecule (the scenarios), bench, or e2e (the rest)."""
    path = nodeid.split("::", 1)[0]
    if path.endswith("test_molecule.py"):
        return "molecule"
    if path.endswith("test_benches.py"):
        return "bench"
    directory = path.rsplit("/", 2)[-2] if path.count("/") else "other"
    return directory  # unit, e2e


def _busy_seconds() -> float | None:
    """The machine's busy CPU time so far (all cores, everything that runs on it: /proc/stat's
    first line without idle and iowait), or None where there is no /proc/stat."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = handle.readline().split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class _BusyMeter:
    """The machine's busy CPU seconds while each part's tests ran: with their wall time, how busy
    the cores were (CI's stage table), so that a slow part shows whether it waited or computed.
    A plugin of its own, registered in pytest_configure: a conftest's item hooks see only the
    tests under its directory, and the unit tests are not under this one."""

    def __init__(self) -> None:
        self.by_part: dict[str, float] = {}

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Iterator[object]:
        before = _busy_seconds()
        try:
            return (yield)
        finally:
            after = _busy_seconds()
            if before is not None and after is not None:
                part = _part(item.nodeid)
                self.by_part[part] = self.by_part.get(part, 0.0) + after - before


BUSY_METER = pytest.StashKey[_BusyMeter]()


def _time_per_part(terminalreporter: pytest.TerminalReporter) -> None:
    """The time of each part of the run (every test's setup, call and teardown, as --durations
    counts them: a session fixture such as the lab counts in the first test that asks for it),
    and, when DEPLOYKIT_STAGE_TIMES names a file (.ci/run), the same lines in it for CI's table
    of stage times (scripts/stage-time)."""
    seconds: dict[str, float] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            if isinstance(report, pytest.TestReport):
                part = _part(report.nodeid)
                seconds[part] = seconds.get(part, 0.0) + report.duration
    if not seconds:
        return
    terminalreporter.section("time per part")
    for part, total in sorted(seconds.items(), key=lambda item: -item[1]):
        terminalreporter.write_line(f"{part:<12} {total:7.0f} s")
    # Each scenario's own time (a test's duration is its wait for a result on the pool).
    scenarios = molecule_scenarios.summary_lines()
    if scenarios:
        terminalreporter.section("molecule scenarios")
        for line in scenarios:
            terminalreporter.write_line(line)
        seconds["molecule (span)"] = molecule_scenarios.span_seconds()
    record = os.environ.get("DEPLOYKIT_STAGE_TIMES")
    if record:
        # A fourth column where measured: the busy CPU seconds meanwhile (scripts/stage-time).
        busy_by_part = terminalreporter.config.stash[BUSY_METER].by_part
        with open(record, "a", encoding="utf-8") as handle:
            for part, total in seconds.items():
                busy = f"\t{busy_by_part[part]:.1f}" if part in busy_by_part else ""
                handle.write(f"  pytest: {part}\t{total:.1f}\t0{busy}\n")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    _skip_accounting(terminalreporter)
    _time_per_part(terminalreporter)


class LabShell:
    """Commands on lab hosts over SSH, with the lab's own key and known_hosts (as Ansible does)."""

    def __init__(self, result: lab.LabUpResult) -> None:
        self.addresses = {h.name: h.address for h in result.hosts}
        ssh_dir = result.inventory.parent / ".ssh"
        self._ssh = [
            "ssh", "-i", str(ssh_dir / "id_ed25519"),
            "-o", f"UserKnownHostsFile={ssh_dir / 'known_hosts'}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
        ]  # fmt: skip

    def run(
        self, host: str, command: str, *, stdin: str | None = None, shown: str | None = None
    ) -> str:
        """Run COMMAND on HOST as root; return its stdout; fail the test on a non-zero exit,
        naming the command as SHOWN (when it holds a secret) or as it is."""
        proc = subprocess.run(
            [*self._ssh, f"root@{self.addresses[host]}", command],
            input=stdin, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            what = shown or command
            pytest.fail(f"{host}: {what!r} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc.stdout.strip()

    def succeeds(self, host: str, command: str) -> bool:
        """True when COMMAND exits 0 on HOST (for polling while a host or service comes back)."""
        proc = subprocess.run(
            [*self._ssh, f"root@{self.addresses[host]}", command],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        return proc.returncode == 0

    def python(self, host: str, code: str, *args: str, env: dict[str, str] | None = None) -> str:
        """Run a stdlib python3 probe on HOST with ARGS; return what it printed. ENV's values
        (credentials) are never shown in a failure's message."""
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
        hidden = " ".join(f"{k}=***" for k in env or {})
        quoted = " ".join(shlex.quote(a) for a in args)
        return self.run(
            host,
            f"{prefix} python3 - {quoted}".strip(),
            stdin=code,
            shown=f"{hidden} python3 - {quoted}".strip(),
        )


@pytest.fixture(scope="session")
def lab_shell(lab_up: lab.LabUpResult) -> LabShell:
    return LabShell(lab_up)
