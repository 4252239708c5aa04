"""deploykit.fleet.activate's `retired` state against a scripted systemd (the controller has none;
tests/e2e/test_faults.py retires a real unit in a restart loop on the lab): the failed mark is
reset when, and only when, the unit is failed once stopped."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from ansible_collections.deploykit.fleet.plugins.modules import activate

UNIT = "loopy-web.service"


@dataclass
class ScriptedSystemd:
    """A unit's properties before the stop and after it; `systemctl` calls recorded. An unloaded
    unit refuses reset-failed, as systemd does ("Unit ... not loaded")."""

    before: dict[str, str]
    after: dict[str, str]
    stopped: bool = False
    calls: list[list[str]] = field(default_factory=list)
    check_mode: bool = False

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        assert unit == UNIT
        state = self.after if self.stopped else self.before
        return {name: state[name] for name in properties if name in state}

    def run_command(self, argv: list[str]) -> tuple[int, str, str]:
        self.calls.append(argv[1:])
        if argv[1] == "stop":
            self.stopped = True
        if argv[1] == "reset-failed" and self.after.get("LoadState") == "not-loaded":
            return 1, "", f"Failed to reset failed state of unit {UNIT}: Unit {UNIT} not loaded."
        return 0, "", ""

    def fail_json(self, msg: str) -> None:
        raise AssertionError(msg)


@pytest.fixture
def systemd(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> ScriptedSystemd:
    before, after = request.param
    scripted = ScriptedSystemd(before=before, after=after)
    monkeypatch.setattr(activate, "systemctl_show", scripted.show)
    monkeypatch.setattr(activate, "POLL_SECONDS", 0.0)
    return scripted


RESTARTING = {"ActiveState": "activating", "UnitFileState": "enabled", "LoadState": "loaded"}


@pytest.mark.parametrize(
    "systemd",
    [(RESTARTING, {"ActiveState": "failed", "LoadState": "loaded"})],
    indirect=True,
)
def test_a_unit_that_ends_failed_by_its_stop_is_reset(systemd: ScriptedSystemd) -> None:
    done = activate.retire_unit(systemd, UNIT, timeout=1)
    assert done == {"changed": True, "killed": False}
    assert [call[0] for call in systemd.calls] == ["stop", "disable", "reset-failed"]


@pytest.mark.parametrize(
    "systemd",
    [(RESTARTING, {"ActiveState": "inactive", "LoadState": "not-loaded"})],
    indirect=True,
)
def test_a_unit_unloaded_once_stopped_is_not_reset(systemd: ScriptedSystemd) -> None:
    done = activate.retire_unit(systemd, UNIT, timeout=1)
    assert done == {"changed": True, "killed": False}
    assert [call[0] for call in systemd.calls] == ["stop", "disable"]


@pytest.mark.parametrize(
    "systemd",
    [
        (
            {"ActiveState": "failed", "UnitFileState": "disabled", "LoadState": "loaded"},
            {"ActiveState": "failed", "LoadState": "loaded"},
        )
    ],
    indirect=True,
)
def test_a_unit_failed_before_is_only_reset(systemd: ScriptedSystemd) -> None:
    systemd.stopped = True  # nothing to stop: its state is the one after
    done = activate.retire_unit(systemd, UNIT, timeout=1)
    assert done == {"changed": True, "killed": False}
    assert systemd.calls == [["reset-failed", UNIT]]


@pytest.mark.parametrize(
    "systemd",
    [({"LoadState": "not-found"}, {"LoadState": "not-found"})],
    indirect=True,
)
def test_a_unit_that_does_not_exist_is_left_alone(systemd: ScriptedSystemd) -> None:
    assert activate.retire_unit(systemd, UNIT, timeout=1) == {
        "changed": False,
        "killed": False,
    }
    assert systemd.calls == []


@pytest.mark.parametrize(
    "systemd", [(RESTARTING, {"ActiveState": "failed", "LoadState": "loaded"})], indirect=True
)
def test_check_mode_says_what_would_change_and_touches_nothing(systemd: ScriptedSystemd) -> None:
    systemd.check_mode = True
    done = activate.retire_unit(systemd, UNIT, timeout=1)
    assert done == {"changed": True, "killed": False}
    assert systemd.calls == []
