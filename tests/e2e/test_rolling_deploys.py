"""Rolling deploys on the lab, through the command line a user runs: a bad release is returned on
every clone it touched (batches already switched included) without a failed request, a concurrent
deploy is refused naming its holder (and --wait queues behind it), a SIGKILLed deploy's lease
turns stale and the next deploy with --take-over returns its half-switched clone to service,
`status` sees a clone switched by hand, and the history keeps every attempt. The tests run in
order, each from the state the previous one left."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, LabShell
from loadgen import LoadGenerator, SessionLogin
from shop_user import User, submit_reports, wait_done, wait_until

from ansible_collections.deploykit.fleet.plugins.module_utils.release import instance_unit
from deploykit import lab

pytestmark = pytest.mark.e2e

APP = "shop"
CLONES = ("app1", "app2", "app3")
# The health endpoint's status line in examples/shop/src/shop/web.py.
HEALTH_LINE = "200 if healthy else 503,"
# A release that is healthy everywhere but on app3: the canary and the second batch pass, the third
# batch fails, and everything already switched must come back.
BAD_ON_APP3 = '200 if healthy and host != "app3" else 503,  # e2e: broken on app3 only'
# The killed deploy's lease (deploykit deploy --lease): stale this many seconds after its last
# renewal. Short, so the test does not wait the default minute; at least rollout.MIN_LEASE.
LEASE = 30


@dataclass
class Run:
    rc: int
    lines: list[dict[str, Any]]
    stderr: str

    @property
    def summary(self) -> dict[str, Any]:
        assert self.lines, f"no JSON output; stderr:\n{self.stderr[-3000:]}"
        return self.lines[-1]


def deploykit(*args: str, timeout: float = 900) -> Run:
    proc = subprocess.run(
        [sys.executable, "-m", "deploykit", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return Run(proc.returncode, lines, proc.stderr)


def build(app: Path, version: str, out: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "deploykit", "build", "--app", str(app), "--version", version,
         "--out", str(out), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    artifact: dict[str, Any] = json.loads(proc.stdout)
    return artifact


# The nodes a deploy stages on (app clones, worker, balancer).
STAGED = (*CLONES, "worker1", "lb1")


def staged_configured(run: Run) -> dict[str, bool]:
    """{host: whether staging found the node's configuration already the one wanted (and so did
    not configure it again)}, from the stage steps' events."""
    return {
        line["host"]: line["configured"]
        for line in run.lines
        if line.get("event") == "step" and line.get("step") == "stage" and "configured" in line
    }


def status() -> dict[str, Any]:
    run = deploykit("status", "--json", timeout=300)
    assert run.rc == 0, run.stderr[-3000:]
    return run.summary


def releases_on_clones(report: dict[str, Any]) -> dict[str, str | None]:
    return {n["host"]: n["release"] for n in report["nodes"] if n["role"] == "app"}


@pytest.fixture(scope="module")
def artifacts(shop: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Three releases of the shop: A and B (the same code, two versions) and BAD_ON_APP3."""
    out = tmp_path_factory.mktemp("artifacts")
    source = ROOT / "examples" / "shop"
    bad = tmp_path_factory.mktemp("bad") / "shop"
    shutil.copytree(
        source, bad, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", ".*_cache")
    )
    web = bad / "src" / "shop" / "web.py"
    text = web.read_text(encoding="utf-8")
    assert text.count(HEALTH_LINE) == 1, "update HEALTH_LINE: the shop's health endpoint changed"
    web.write_text(text.replace(HEALTH_LINE, BAD_ON_APP3), encoding="utf-8")
    stamp = time.strftime("%H%M%S")
    sources = {"a": source, "b": source, "bad": bad}
    # Side by side: each build is one controller process, mostly CPU, and the lab idles meanwhile.
    with ThreadPoolExecutor(max_workers=len(sources)) as builds:
        built = {
            name: builds.submit(build, path, f"2.0.0-e2e{stamp}{name}", out)
            for name, path in sources.items()
        }
        return {name: future.result() for name, future in built.items()}


@pytest.fixture
def load(shop: str) -> Iterator[LoadGenerator]:
    """Users on the site while a test deploys: every failed request is counted."""
    paths: list[str | tuple[str, float]] = [("/", 3), ("/products", 3), ("/me", 3), ("/healthz", 1)]
    generator = LoadGenerator(shop, paths=paths, concurrency=6, rate=60, session=SessionLogin())
    generator.start()
    generator.phase("deploy")
    try:
        yield generator
    finally:
        generator.stop()


def test_a_release_one_node_cannot_stage_changes_nothing_live(
    artifacts: dict[str, dict[str, Any]], lab_up: lab.LabUpResult
) -> None:
    """Staging and the switch are one run (playbooks/rollout/deploy.yml): a node that cannot stage
    the release (here a file where its release directory goes) stops the run before the migration
    and before any clone is drained; the node is named, the others are untouched."""
    a = artifacts["a"]
    shell = LabShell(lab_up)
    before = releases_on_clones(status())
    blocker = f"/srv/{APP}/releases/{a['release_id']}"
    shell.run("app2", f"echo not-a-release > {blocker}")
    try:
        run = deploykit("deploy", "--artifact", a["path"], "--json")
    finally:
        shell.run("app2", f"rm -f {blocker}")
    summary = run.summary
    assert run.rc == 1, summary
    assert summary["outcome"] == "failed"
    assert "app2: staging:" in summary["failure"], summary["failure"]
    nodes = summary["nodes"]
    assert (nodes["app2/app"]["outcome"], nodes["app2/app"]["step"]) == ("failed", "stage")
    assert {n["outcome"] for key, n in nodes.items() if key != "app2/app"} == {"untouched"}
    steps = {line["step"] for line in run.lines if line.get("event") == "step"}
    assert not steps & {"drain", "switch", "ready", "pages"}, steps
    report = status()
    assert releases_on_clones(report) == before
    assert {n["haproxy"] for n in report["nodes"] if n["role"] == "app"} == {"UP"}


def test_a_deploy_reports_each_node_in_json(artifacts: dict[str, dict[str, Any]]) -> None:
    a = artifacts["a"]
    run = deploykit("deploy", "--artifact", a["path"], "--batch", "1", "--json")
    summary = run.summary
    assert run.rc == 0, (summary, run.stderr[-3000:])
    assert summary["event"] == "deploy"
    assert summary["outcome"] == "succeeded"
    assert summary["release"] == a["release_id"]
    assert summary["batches"] == [["app1"], ["app2"], ["app3"]]
    steps = {(line["host"], line["step"]) for line in run.lines if line.get("event") == "step"}
    for clone in CLONES:
        assert summary["nodes"][f"{clone}/app"]["outcome"] == "switched"
        assert {(clone, "drain"), (clone, "switch"), (clone, "ready"), (clone, "done")} <= steps
        # Where the time went: each step's seconds on each node, in the summary and the history.
        seconds = summary["nodes"][f"{clone}/app"]["seconds"]
        assert {"stage", "drain", "switch", "ready"} <= set(seconds), seconds
    # Nothing the nodes' configuration is made of changed since `deploykit up` configured them:
    # staging skipped it on every node.
    assert staged_configured(run) == dict.fromkeys(STAGED, True)
    # Every event carries its wall-clock time and the seconds since the command started.
    timed = [line for line in run.lines if line.get("event") in ("step", "log")]
    assert timed and all("ts" in line and line["elapsed"] >= 0 for line in timed)
    assert summary["nodes"]["worker1/worker"]["outcome"] == "switched"
    report = status()
    assert report["live"] == a["release_id"]
    assert report["drift"] is False
    assert {n["haproxy"] for n in report["nodes"] if n["role"] == "app"} == {"UP"}


def test_a_release_failing_on_the_last_batch_is_rolled_back_everywhere(
    artifacts: dict[str, dict[str, Any]], load: LoadGenerator, tmp_path: Path
) -> None:
    a, bad = artifacts["a"], artifacts["bad"]
    # An inventory variable of the roles changed since the last deploy (a setting the contract
    # does not read: the settings file stays the same): every node is configured again.
    marker = lab.secrets_file(ROOT).with_name("e2e-configuration.yml")
    marker.write_text(f"app_settings:\n  E2E_CONFIGURATION: '{time.time()}'\n", encoding="utf-8")
    # The on-failure hook: what it is told, and the summary on its stdin.
    hook = tmp_path / "on-failure"
    hook.write_text("#!/bin/sh\nenv | grep '^DEPLOYKIT_' | sort > env.txt\ncat > summary.json\n")
    hook.chmod(0o755)
    try:
        # The canary (app1, healthy) soaks on the live traffic first, and passes. app3 answers
        # 503 until the health gate's deadline (15 s, not the default 30: the test's own time).
        run = deploykit(
            "deploy", "--artifact", bad["path"], "--batch", "1", "--json", "--hooks",
            str(tmp_path), "--canary-soak", "4", "--health-timeout", "15",
        )  # fmt: skip
    finally:
        marker.unlink()
    load.stop()
    told = dict(line.split("=", 1) for line in (tmp_path / "env.txt").read_text().splitlines())
    assert told["DEPLOYKIT_OUTCOME"] == "rolled_back" and "app3" in told["DEPLOYKIT_FAILURE"]
    changed = told["DEPLOYKIT_CHANGED_HOSTS"].split()
    assert set(CLONES) <= set(changed) and "worker1" not in changed, told
    assert json.loads((tmp_path / "summary.json").read_text()) == run.summary
    assert staged_configured(run) == dict.fromkeys(STAGED, False)
    summary = run.summary
    assert run.rc == 1, (summary, run.stderr[-3000:])
    assert summary["outcome"] == "rolled_back"
    canary = summary["canary"]
    assert (canary["verdict"], canary["reason"]) == ("passed", None), canary
    assert canary["canary"]["servers"] == ["app1"] and canary["canary"]["requests"] >= 20, canary
    assert canary["old"]["servers"] == ["app2", "app3"] and canary["seconds"] >= 4, canary
    nodes = summary["nodes"]
    assert "soak" in nodes["app1/app"]["seconds"], nodes["app1/app"]
    # app1 (the canary) and app2 had switched and served the bad release: they came back too.
    assert nodes["app1/app"]["outcome"] == "rolled_back"
    assert nodes["app2/app"]["outcome"] == "rolled_back"
    assert nodes["app3/app"]["step"] == "switch"
    # The message names the node, the step and the cause, with the service's last log lines.
    assert "app3" in summary["failure"] and "step switch" in summary["failure"]
    assert "503" in nodes["app3/app"]["message"] and "Its log:" in nodes["app3/app"]["message"]
    # ... and those lines as data: what the unit logged since this deploy restarted it.
    assert nodes["app3/app"]["journal"], nodes["app3/app"]
    assert not nodes["app1/app"]["journal"], "only the failed node's log is reported"
    # The workers switch after every clone: they never left the release they ran.
    assert nodes["worker1/worker"]["outcome"] == "untouched"
    report = status()
    assert releases_on_clones(report) == dict.fromkeys(CLONES, a["release_id"])
    assert report["drift"] is False
    assert {n["haproxy"] for n in report["nodes"] if n["role"] == "app"} == {"UP"}
    figures = load.report()
    assert figures.failures == 0, figures.format_table()


def test_a_concurrent_deploy_is_refused_naming_the_holder_and_wait_queues(
    artifacts: dict[str, dict[str, Any]],
) -> None:
    b = artifacts["b"]
    first = subprocess.Popen(
        [sys.executable, "-m", "deploykit", "deploy", "--artifact", b["path"], "--json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            lock = deploykit("lock", "status", "--json", timeout=120).summary
            if lock["held"]:
                break
            time.sleep(0.5)
        else:
            pytest.fail("the first deploy never took the lock")
        assert lock["holder"]["command"] == "deploy"
        assert lock["holder"]["release"] == b["release_id"]
        second = deploykit("deploy", "--artifact", b["path"], "--json")
        assert second.rc == 1
        assert second.summary["outcome"] == "refused"
        assert lock["holder"]["who"] in second.summary["message"]
        assert "since" in second.summary["message"]
        # --wait queues behind the holder; by then the release is live: nothing left to do.
        queued = deploykit("deploy", "--artifact", b["path"], "--wait", "600", "--json")
        assert queued.rc == 0, queued.summary
        assert queued.summary["outcome"] == "unchanged"
    finally:
        stdout, stderr = first.communicate(timeout=900)
    assert first.returncode == 0, (stdout[-3000:], stderr[-3000:])
    assert json.loads(stdout.splitlines()[-1])["outcome"] == "succeeded"
    assert deploykit("lock", "status", "--json").summary["held"] is False


def descendants(pid: int) -> list[int]:
    """Every process under ``pid`` (its ansible-playbook, their workers and ssh), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        children.setdefault(int(stat.rpartition(")")[2].split()[1]), []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def follow(proc: subprocess.Popen[str]) -> queue.Queue[dict[str, Any] | None]:
    """The JSON lines of ``proc``'s stdout as they come (None once it closes)."""
    lines: queue.Queue[dict[str, Any] | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    lines.put(json.loads(line))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


def clones_serving(base_url: str, release: str, *, within: float = 60) -> set[str]:
    """The clones that answered the balancer's /healthz with ``release`` (200), within a
    deadline of ``within`` seconds, until every clone has."""
    seen: set[str] = set()
    deadline = time.monotonic() + within
    while set(CLONES) - seen and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base_url}/healthz", timeout=10) as response:
                answer = json.loads(response.read())
        except OSError:
            time.sleep(0.5)
            continue
        if answer.get("release") == release:
            seen.add(str(answer.get("clone")))
    return seen


def test_a_killed_deploys_stale_lease_is_taken_over_and_its_clone_returned(
    artifacts: dict[str, dict[str, Any]], shop: str, tmp_path: Path
) -> None:
    a, b = artifacts["a"], artifacts["b"]
    # B runs everywhere (the previous test). A deploy of A with a short lease is SIGKILLed, with
    # every process it started (its controller dies), the moment the canary's switch starts: app1
    # is drained and half switched, and the lock stays on the balancer, no longer renewed.
    with (tmp_path / "killed.stderr").open("w") as stderr:
        killed = subprocess.Popen(
            [sys.executable, "-m", "deploykit", "deploy", "--artifact", a["path"], "--batch", "1",
             "--lease", str(LEASE), "--json"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True,
        )  # fmt: skip
    events = follow(killed)
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + 600
    try:
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no clone's switch started within 600 s: {seen[-10:]}"
            try:
                event = events.get(timeout=remaining)
            except queue.Empty:
                continue
            assert event is not None, (
                f"the deploy ended before a switch started: {seen[-10:]}\n"
                + (tmp_path / "killed.stderr").read_text()[-3000:]
            )
            seen.append(event)
            started = event.get("event") == "step" and "status" not in event
            if started and event.get("step") == "switch":
                break
    finally:
        for pid in [killed.pid, *descendants(killed.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed.wait(timeout=60)
    killed_at = time.monotonic()
    half_switched = event["host"]
    assert half_switched == "app1", seen[-10:]  # the canary

    # Right after the kill the lease is live (the controller was renewing it); once not renewed
    # for LEASE seconds, `lock status` reports it stale, naming its holder. Deadline: LEASE + 120 s.
    first = deploykit("lock", "status", "--json", timeout=120).summary
    assert first["held"] is True, first
    assert first["holder"]["release"] == a["release_id"] and first["holder"]["lease"] == LEASE
    assert first["stale"] is False, f"stale already: was the lease renewed at all? {first}"
    lock = first
    while not lock["stale"]:
        assert time.monotonic() < killed_at + LEASE + 120, (
            f"the lease is not stale {LEASE + 120} s after the kill (lease {LEASE} s): {lock}"
        )
        time.sleep(2)
        lock = deploykit("lock", "status", "--json", timeout=120).summary
        assert lock["held"] is True, lock
    assert lock["holder"]["token"] == first["holder"]["token"]
    assert lock["renewed"] > LEASE and lock["stale_after"] == LEASE
    assert lock["age"] >= lock["renewed"]
    text = subprocess.run(
        [sys.executable, "-m", "deploykit", "lock", "status"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert "STALE: not renewed for" in text.stdout and f"(stale after {LEASE} s)" in text.stdout
    assert lock["holder"]["who"] in text.stdout

    # A plain deploy is refused: the lease is stale, and the message says how to take it over.
    refused = deploykit("deploy", "--artifact", b["path"], "--json")
    assert refused.rc == 1, refused.summary
    assert refused.summary["outcome"] == "refused"
    message = refused.summary["message"]
    assert lock["holder"]["who"] in message and "STALE: not renewed for" in message, message
    assert "deploykit deploy --take-over" in message, message
    still = deploykit("lock", "status", "--json").summary
    assert still["holder"]["token"] == first["holder"]["token"], still

    # The documented way forward: --take-over takes the stale lease and the deploy returns the
    # half-switched clone to service (it is not settled: drained, maybe on the other release).
    taken = deploykit("deploy", "--artifact", b["path"], "--take-over", "--json")
    summary = taken.summary
    assert taken.rc == 0, (summary, taken.stderr[-3000:])
    assert summary["outcome"] == "succeeded", summary
    logs = [line["message"] for line in taken.lines if line.get("event") == "log"]
    assert any("took over a stale deploy lock" in line and lock["holder"]["who"] in line
               for line in logs), logs  # fmt: skip
    assert summary["nodes"][f"{half_switched}/app"]["outcome"] == "switched", summary["nodes"]
    report = status()
    assert releases_on_clones(report) == dict.fromkeys(CLONES, b["release_id"])
    assert {n["haproxy"] for n in report["nodes"] if n["role"] == "app"} == {"UP"}
    assert report["drift"] is False
    assert clones_serving(shop, b["release_id"]) == set(CLONES)
    assert deploykit("lock", "status", "--json").summary["held"] is False
    # The take-over is in the history, with the holder it replaced.
    records = deploykit("releases", "--limit", "10", "--json").summary["records"]
    takeovers = [r for r in records if r.get("action") == "lock take-over"]
    assert takeovers, records
    assert takeovers[-1]["holder"]["who"] == lock["holder"]["who"]
    assert takeovers[-1]["holder"]["release"] == a["release_id"]
    assert "token" not in takeovers[-1]["holder"]


def test_status_reports_drift_after_one_clone_is_switched_by_hand(
    artifacts: dict[str, dict[str, Any]], lab_up: lab.LabUpResult
) -> None:
    a, b = artifacts["a"], artifacts["b"]
    shell = LabShell(lab_up)
    root = f"/srv/{APP}"
    shell.run(
        "app2",
        f"ln -sfn releases/{a['release_id']} {root}/.current.hand && "
        f"mv -T {root}/.current.hand {root}/current && systemctl restart {APP}-web",
    )
    report = status()
    assert report["drift"] is True
    assert report["live"] is None
    assert releases_on_clones(report)["app2"] == a["release_id"]
    assert any("app2" in reason for reason in report["drift_reasons"])
    text = subprocess.run(
        [sys.executable, "-m", "deploykit", "status"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert "DRIFT" in text.stdout
    # The next deploy of the live release puts the one clone back; the others stay as they are.
    run = deploykit("deploy", "--artifact", b["path"], "--json")
    assert run.rc == 0, run.summary
    assert run.summary["nodes"]["app2/app"]["outcome"] == "switched"
    assert run.summary["nodes"]["app1/app"]["outcome"] == "unchanged"
    assert status()["drift"] is False


def test_a_node_configured_by_other_code_is_configured_again_by_a_deploy_of_the_live_release(
    artifacts: dict[str, dict[str, Any]], lab_up: lab.LabUpResult
) -> None:
    """After an upgrade of deploykit (or a change of the inventory), a deploy of the release the
    fleet runs applies the new configuration: a node whose recorded configuration is another one
    is configured again and restarted through the rolling switch; the others are left alone (not
    even staged)."""
    b = artifacts["b"]
    shell = LabShell(lab_up)
    recorded = f"/srv/{APP}/shared/configured"
    shell.run("app3", f"echo configured-by-an-older-deploykit > {recorded}")
    run = deploykit("deploy", "--artifact", b["path"], "--json")
    assert run.rc == 0, run.summary
    # Only the node to switch is staged (and configured again): the others run the release, in
    # service, configured by this code.
    assert staged_configured(run) == {"app3": False}
    assert run.summary["nodes"]["app3/app"]["outcome"] == "switched"
    assert run.summary["nodes"]["app1/app"]["outcome"] == "unchanged"
    assert "configured-by-an-older-deploykit" not in shell.run("app3", f"cat {recorded}")
    # Configured now: the next deploy of it has nothing to do.
    again = deploykit("deploy", "--artifact", b["path"], "--json")
    assert again.rc == 0, again.summary
    assert again.summary["outcome"] == "unchanged"


def test_rollback_returns_to_the_release_before_the_live_one(
    artifacts: dict[str, dict[str, Any]], shop: str, lab_up: lab.LabUpResult
) -> None:
    """Jobs keep coming while the rollback runs: the old release's worker finishes the ones it
    took (each job runs once: none killed and redone), the release's own worker takes the next
    ones, and the old one's unit ends stopped and disabled."""
    a, b = artifacts["a"], artifacts["b"]
    user = User(shop, f"rollback-{time.strftime('%H%M%S')}").login()
    submitted: list[str] = []
    stop = threading.Event()

    def submit() -> None:
        while not stop.is_set():
            submitted.extend(submit_reports(user, 1))
            stop.wait(0.7)

    submitter = threading.Thread(target=submit, daemon=True)
    submitter.start()
    try:
        run = deploykit("rollback", "--json")
    finally:
        stop.set()
        submitter.join(timeout=30)
    submitted.extend(submit_reports(user, 2))  # after the rollback: the release's own worker's
    assert run.rc == 0, (run.summary, run.stderr[-3000:])
    assert run.summary["event"] == "rollback"
    assert (run.summary["previous"], run.summary["release"]) == (b["release_id"], a["release_id"])
    assert set(releases_on_clones(status()).values()) == {a["release_id"]}
    done = wait_done(user, submitted, timeout=120)
    assert {doc["attempts"] for doc in done.values()} == {1}, done
    ran = [doc["release"] for doc in done.values()]
    assert set(ran) == {a["release_id"], b["release_id"]}, ran
    assert {done[job]["release"] for job in submitted[-2:]} == {a["release_id"]}
    # One worker left, A's: B's instance stopped once its jobs were done, and is disabled.
    shell = LabShell(lab_up)
    kept, old = (instance_unit(f"{APP}-worker@.service", r["release_id"]) for r in (a, b))
    wait_until(
        "the old release's worker stopped",
        lambda: not shell.succeeds("worker1", f"systemctl is-active --quiet {old}"),
        timeout=60,
    )
    enabled = shell.run("worker1", f"systemctl is-enabled {kept} {old} || true").split()
    assert enabled == ["enabled", "disabled"], enabled
    assert shell.succeeds("worker1", f"systemctl is-active --quiet {kept}")


def test_the_history_records_every_attempt(artifacts: dict[str, dict[str, Any]]) -> None:
    records = deploykit("releases", "--limit", "50", "--json").summary["records"]
    mine = [r for r in records if "e2e" in str(r.get("to")) or "e2e" in str(r.get("from"))]
    outcomes = [(r["action"], r["outcome"]) for r in mine]
    # Every attempt, in the order each ended: deploy A; deploy BAD (rolled back); the deploy refused
    # while B's held the lock; B; the one queued behind B (nothing left to do); (the SIGKILLed
    # deploy records nothing: it never ended) the deploy refused by its stale lease; the one that
    # took it over; the deploy that put the hand-switched clone back; the deploy that configured
    # a clone again, and the one after it (nothing left to do); the rollback.
    assert outcomes[-11:] == [
        ("deploy", "succeeded"),
        ("deploy", "rolled_back"),
        ("deploy", "refused"),
        ("deploy", "succeeded"),
        ("deploy", "unchanged"),
        ("deploy", "refused"),
        ("deploy", "succeeded"),
        ("deploy", "succeeded"),
        ("deploy", "succeeded"),
        ("deploy", "unchanged"),
        ("rollback", "succeeded"),
    ], outcomes
    bad = next(r for r in reversed(mine) if r["outcome"] == "rolled_back")
    assert bad["to"] == artifacts["bad"]["release_id"]
    assert bad["from"] == artifacts["a"]["release_id"]
    assert bad["nodes"]["app3/app"]["step"] == "switch"
    # The history keeps the cause too: the failed node's message and its unit's last log lines.
    assert "503" in bad["nodes"]["app3/app"]["message"]
    assert bad["nodes"]["app3/app"]["journal"]
    assert all(r["who"] and r["recorded"] and "seconds" in r for r in mine)


# Run on the worker by the test, as a client of the queue: a report job of SECONDS seconds,
# longer than a rollback's way to its worker step, so the worker that takes it is still finishing
# it when the next rollback switches back to that worker's release.
LONG_JOB = """
set -a; . /srv/{app}/shared/env; set +a
cd /srv/{app}/current && runuser -u deploykit -- venv/bin/python -c '
import sys; sys.path.insert(0, "source/src")
from shop.jobs import celery_app, enqueue_report
enqueue_report(celery_app, sys.argv[1], float(sys.argv[2]))' {job_id} {seconds}
"""


def test_a_switch_back_to_a_worker_still_finishing_a_job_waits_for_it_then_starts_it(
    artifacts: dict[str, dict[str, Any]], shop: str, lab_up: lab.LabUpResult
) -> None:
    """A rollback leaves the old release's worker finishing the job it holds; a rollback straight
    back finds that worker still stopping (it answers no ping and would exit once done): the
    switch waits for its stop, starts the release's worker again and succeeds, and the job ran
    once, to its end."""
    a, b = artifacts["a"], artifacts["b"]
    shell = LabShell(lab_up)
    a_worker, b_worker = (instance_unit(f"{APP}-worker@.service", r["release_id"]) for r in (a, b))
    # The state the rollback test left: A live.
    live = status()["live"]
    assert live == a["release_id"], live
    job_id = str(uuid.uuid4())
    shell.run("worker1", LONG_JOB.format(app=APP, job_id=job_id, seconds=40))
    user = User(shop, f"switch-back-{time.strftime('%H%M%S')}").login()
    wait_until(
        "the live worker runs the long job",
        lambda: (user.get(f"/reports/{job_id}").json() or {}).get("status") == "running",
        timeout=30,
    )
    away = deploykit("rollback", "--to", b["release_id"], "--json")
    assert away.rc == 0, (away.summary, away.stderr[-3000:])
    # What the test is about: A's worker is still finishing the job as the rollback back starts.
    state = shell.run("worker1", f"systemctl show -P ActiveState {a_worker}").strip()
    assert state == "deactivating", state
    back = deploykit("rollback", "--to", a["release_id"], "--json")
    assert back.rc == 0, (back.summary, back.stderr[-3000:])
    assert back.summary["outcome"] == "succeeded", back.summary
    assert shell.succeeds("worker1", f"systemctl is-active --quiet {a_worker}")
    enabled = shell.run("worker1", f"systemctl is-enabled {a_worker} {b_worker} || true").split()
    assert enabled == ["enabled", "disabled"], enabled
    done = user.get(f"/reports/{job_id}").json()
    assert (done["status"], done["attempts"], done["release"]) == ("done", 1, a["release_id"]), done
