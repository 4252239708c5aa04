"""ansible-runner's pty, closed once ansible-playbook has exited: no sleep, the exit status kept."""

from __future__ import annotations

import pexpect
import ptyprocess.ptyprocess
import pytest

import deploykit.runner  # noqa: F401 - importing it sets the close up


@pytest.mark.parametrize("command", [["true"], ["false"]])
def test_a_pty_closed_after_its_process_exited_sleeps_not_and_keeps_its_status(
    command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    slept: list[float] = []
    real_sleep = ptyprocess.ptyprocess.time.sleep
    monkeypatch.setattr(
        ptyprocess.ptyprocess.time, "sleep", lambda s: (slept.append(s), real_sleep(s))
    )
    # As ansible-runner does: read to EOF while the child lives, then close.
    child = pexpect.spawn(command[0], command[1:], encoding="utf-8")
    child.expect(pexpect.EOF, timeout=10)
    child.close()
    assert [s for s in slept if s > 0] == []
    assert child.exitstatus == (0 if command == ["true"] else 1)


def test_a_child_still_alive_at_the_close_is_still_ended() -> None:
    child = pexpect.spawn("sleep", ["30"], encoding="utf-8")
    child.close(force=True)
    assert not child.isalive()
