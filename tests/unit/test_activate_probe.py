"""deploykit.fleet.activate's health command probe: runs overlap, so that the first run sent once
the service is ready answers, however long the runs sent before wait for theirs."""

from __future__ import annotations

import time
from pathlib import Path

from ansible_collections.deploykit.fleet.plugins.modules import activate
from ansible_collections.deploykit.fleet.plugins.modules.activate import CommandProbe


def probe_until(probe: CommandProbe, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if probe.poll():
            return True
        time.sleep(activate.POLL_SECONDS)
    return False


def test_a_run_sent_once_ready_answers_while_an_earlier_one_still_waits(tmp_path: Path) -> None:
    ready, waiting = tmp_path / "ready", tmp_path / "waiting"
    # Like a ping sent before the worker joined: unanswered, it waits out its 3 s timeout.
    probe = CommandProbe(
        ["sh", "-c", f"test -e {ready} && exit 0; touch {waiting}; sleep 3; exit 69"]
    )
    assert not probe.poll()
    first = probe.running[0][1]
    while not waiting.exists():
        time.sleep(0.01)
    ready.touch()
    try:
        assert probe_until(probe, 2.5), probe.last
        assert first.poll() is None, "the answer came from the first run, not a later one"
    finally:
        probe.stop()
    assert first.poll() is not None, "a run left waiting is ended with the probe"


def test_no_more_than_the_bound_wait_at_once_and_the_deadline_names_the_command() -> None:
    probe = CommandProbe(["sleep", "30"])
    most = 0
    deadline = time.monotonic() + activate.COMMAND_EVERY * (activate.COMMAND_IN_FLIGHT + 2)
    while time.monotonic() < deadline:
        assert not probe.poll()
        most = max(most, len(probe.running))
        time.sleep(activate.POLL_SECONDS)
    running = [proc for _, proc, _ in probe.running]
    probe.stop()
    assert most == activate.COMMAND_IN_FLIGHT
    assert all(proc.poll() is not None for proc in running)
    assert probe.last == "sleep did not answer before the deadline"


def test_a_failed_run_is_the_last_answer_with_its_output() -> None:
    probe = CommandProbe(
        ["sh", "-c", "echo 'Error: No nodes replied within time constraint' >&2; exit 69"]
    )
    assert not probe_until(probe, 1.0)
    probe.stop()
    assert probe.last == "rc 69: Error: No nodes replied within time constraint"


def test_runs_still_waiting_after_the_one_that_answered_are_ended_too(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    # The first run to get going waits 6 s; the second answers 1.5 s after it got going (the
    # third has started by then, 0.5 s after it); the third waits 6 s. mkdir: one run per slot.
    script = (
        f"mkdir {first} 2>/dev/null && exec sleep 6; "
        f"mkdir {second} 2>/dev/null && sleep 1.5 && exit 0; exec sleep 6"
    )
    probe = CommandProbe(["sh", "-c", script])
    try:
        assert probe_until(probe, 4.0), probe.last
        waiting = [proc for _, proc, _ in probe.running]
        assert len(waiting) == 2, "the first run and the one started after the answer"
    finally:
        probe.stop()
    assert all(proc.poll() is not None for proc in waiting)
    assert probe.last == "rc 0: "
