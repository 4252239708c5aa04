"""`deploykit logs` on the lab with the shop deployed: the application's journal from every host
of a group over real SSH, merged by time; following it until Ctrl-C leaves nothing running on the
hosts. The lines come from real events: the units' start by `deploykit up`, and a reload (a
graceful HUP: gunicorn says "Handling signal: hup") that the tests send to one clone.
"""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import ROOT, LabShell

from deploykit import lab

pytestmark = pytest.mark.e2e

HUP = "Handling signal: hup"


# `python -m deploykit ARGS` with Ctrl-C's default, as from a terminal: a test run started in the
# background (CI's) hands its children SIGINT ignored, and Python keeps an inherited SIG_IGN.
AS_ON_A_TERMINAL = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'deploykit'; runpy.run_module('deploykit', run_name='__main__')"
)


def deploykit_logs(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploykit", "logs", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def json_lines(proc: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def hosts_of(result: lab.LabUpResult, group: str) -> list[str]:
    return [host.name for host in result.hosts if group in host.groups]


def journalctl_running(lab_shell: LabShell, host: str) -> str:
    """The journalctl processes on HOST ('' when none), other than this probe's own pgrep."""
    return lab_shell.run(host, "pgrep -a journalctl || true")


def test_every_clone_and_worker_merged_by_time(lab_up: lab.LabUpResult, shop: str) -> None:
    del shop
    clones, workers = hosts_of(lab_up, "app"), hosts_of(lab_up, "worker")
    lines = json_lines(deploykit_logs("app,worker", "--since", "1d", "-n", "2000", "--json"))
    assert lines, "no line at all"
    # Every clone and every worker started the shop's unit (deploykit up): each has lines.
    assert {line["host"] for line in lines} == set(clones + workers)
    for line in lines:
        assert set(line) == {"host", "time", "unit", "priority", "message"}
        # A clone's web unit; a worker's unit per release (the instance names the release).
        wanted = r"shop-web\.service" if line["host"] in clones else r"shop-worker@[^@/]+\.service"
        assert re.fullmatch(wanted, line["unit"]), line
    times = [line["time"] for line in lines]
    assert times == sorted(times), "the lines are not merged by time"
    # -n: the newest lines of all hosts together.
    newest = json_lines(deploykit_logs("app,worker", "--since", "1d", "-n", "3", "--json"))
    assert newest == lines[-3:]


def test_grep_and_the_host_on_every_line(
    lab_up: lab.LabUpResult, shop: str, lab_shell: LabShell
) -> None:
    del shop
    clone = hosts_of(lab_up, "app")[1]
    since = (datetime.now(UTC) - timedelta(seconds=1)).isoformat(timespec="seconds")
    lab_shell.run(clone, "systemctl reload shop-web")
    deadline = time.monotonic() + 30
    while True:
        proc = deploykit_logs("app", "--since", since, "--grep", HUP)
        assert proc.returncode == 0, proc.stderr[-3000:]
        lines = proc.stdout.splitlines()
        if lines:
            break
        assert time.monotonic() < deadline, f"no {HUP!r} line from {clone} within 30 s"
        time.sleep(1)
    for line in lines:
        # TIME HOST UNIT: MESSAGE, only the reloaded clone's lines, and only the matching ones.
        stamp, host, unit, message = line.split(" ", 3)
        assert stamp.endswith("Z") and "T" in stamp, line
        assert (host, unit) == (clone, "shop-web:"), line
        assert HUP in message, line


def test_follow_prints_new_lines_then_ctrl_c_leaves_nothing_running(
    lab_up: lab.LabUpResult, shop: str, lab_shell: LabShell
) -> None:
    del shop
    clones = hosts_of(lab_up, "app")
    follower = subprocess.Popen(
        [sys.executable, "-c", AS_ON_A_TERMINAL, "logs", "-f", "--json", "--grep", HUP,
         "--since", "1s", "app"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    arrived: queue.Queue[str] = queue.Queue()
    assert follower.stdout is not None
    reader = threading.Thread(
        target=lambda: [arrived.put(line) for line in follower.stdout or []], daemon=True
    )
    reader.start()
    try:
        # Following on every clone: one journalctl -f each.
        deadline = time.monotonic() + 60
        while not all("--follow" in journalctl_running(lab_shell, host) for host in clones):
            assert follower.poll() is None, follower.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "not following every clone within 60 s"
            time.sleep(1)
        lab_shell.run(clones[-1], "systemctl reload shop-web")
        line = json.loads(arrived.get(timeout=30))
        assert line["host"] == clones[-1] and HUP in line["message"], line
    finally:
        follower.send_signal(signal.SIGINT)
        try:
            _, stderr = follower.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            follower.kill()
            pytest.fail("deploykit logs -f did not end within 20 s of Ctrl-C")
    assert follower.returncode == 0, stderr[-3000:]
    # The connections closed: every host's journalctl -f was hung up with them.
    deadline = time.monotonic() + 10
    while True:
        left = {host: found for host in clones if (found := journalctl_running(lab_shell, host))}
        if not left:
            break
        assert time.monotonic() < deadline, f"journalctl still running after Ctrl-C: {left}"
        time.sleep(0.5)


def test_bad_input_exits_2_before_any_host_is_contacted(lab_up: lab.LabUpResult) -> None:
    del lab_up
    for args, said in (
        (("nope",), "no group or host named 'nope'"),
        (("app", "--since", "yesterday"), "expected a duration"),
        (("app", "--grep", "a["), "is not a regular expression"),
        (("app", "-n", "-1"), "expected a number of lines"),
    ):
        proc = deploykit_logs(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert said in " ".join(proc.stderr.split()), (args, proc.stderr)
