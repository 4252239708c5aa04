"""The worker's unit per release (a systemd template): the instance a release runs as, and how
deploykit.fleet.activate stops the other releases' instances once the new one is healthy, against
a scripted systemd (the controller has none; the lab's deploys and tests/e2e prove it on systemd).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ansible_collections.deploykit.fleet.plugins.module_utils import release
from ansible_collections.deploykit.fleet.plugins.modules import activate

OLD = "shop-worker@1.0.0-aaaa.service"
FAILED = "shop-worker@0.9.0-bbbb.service"


@pytest.mark.parametrize(
    ("release_id", "unit"),
    [
        ("1.0.0-8980b8140cfb", "shop-worker@1.0.0-8980b8140cfb.service"),
        ("2.0.0+local.1-ab_c", "shop-worker@2.0.0\\x2blocal.1-ab_c.service"),
    ],
)
def test_a_release_runs_as_an_instance_named_by_its_id(release_id: str, unit: str) -> None:
    assert release.instance_unit("shop-worker@.service", release_id) == unit
    # The unit passes its instance (%i) to deploykit-release exec --release, which reads it back.
    instance = unit.removeprefix("shop-worker@").removesuffix(".service")
    assert release.release_of_instance(instance) == release_id
    # Every character left is one systemd allows in a unit name.
    assert all(c.isalnum() or c in ":_.\\-@" for c in unit)


@dataclass
class ScriptedSystemd:
    """Units' properties; a stop makes a unit stop at once, or stay deactivating (a warm
    shutdown finishing its jobs) when it is in ``slow``."""

    units: dict[str, dict[str, str]]
    slow: set[str] = field(default_factory=set)
    calls: list[list[str]] = field(default_factory=list)
    check_mode: bool = False

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        state = self.units.get(unit, {"LoadState": "not-found"})
        return {name: state[name] for name in properties if name in state}

    def run_command(self, argv: list[str]) -> tuple[int, str, str]:
        self.calls.append(argv[1:])
        verb, unit = argv[1], argv[-1]
        if verb == "stop":
            self.units[unit]["ActiveState"] = "deactivating" if unit in self.slow else "inactive"
        elif verb == "kill":
            self.units[unit]["ActiveState"] = "inactive"
        elif verb == "disable":
            self.units[unit]["UnitFileState"] = "disabled"
        elif verb == "reset-failed":
            self.units[unit]["ActiveState"] = "inactive"
        return 0, "", ""

    def fail_json(self, msg: str) -> None:
        raise AssertionError(msg)


@pytest.fixture
def systemd(monkeypatch: pytest.MonkeyPatch) -> ScriptedSystemd:
    scripted = ScriptedSystemd(
        units={
            OLD: {"ActiveState": "active", "UnitFileState": "enabled", "LoadState": "loaded"},
            FAILED: {"ActiveState": "failed", "UnitFileState": "disabled", "LoadState": "loaded"},
        },
        slow={OLD},
    )
    monkeypatch.setattr(activate, "systemctl_show", scripted.show)
    monkeypatch.setattr(activate, "POLL_SECONDS", 0.0)
    return scripted


def test_the_old_releases_worker_is_disabled_and_stops_in_the_background(
    systemd: ScriptedSystemd,
) -> None:
    done = activate.stop_others(systemd, [OLD, FAILED], timeout=None)
    # Asked to stop, not waited for: it finishes its jobs while the deploy goes on.
    assert done == {"retired": [], "stopping": [OLD], "disabled": [OLD], "killed": False}
    assert ["stop", "--no-block", OLD] in systemd.calls
    assert systemd.units[OLD] == {
        "ActiveState": "deactivating", "UnitFileState": "disabled", "LoadState": "loaded"
    }  # fmt: skip
    # A failed instance is only forgotten: there is nothing to stop.
    assert systemd.units[FAILED]["ActiveState"] == "inactive"
    assert not any(call[0] == "stop" and call[-1] == FAILED for call in systemd.calls)


def test_a_return_waits_for_the_stop_and_kills_at_its_bound(systemd: ScriptedSystemd) -> None:
    done = activate.stop_others(systemd, [OLD], timeout=0.01)
    # Still stopping at the bound: killed, and reported so.
    assert done == {"retired": [OLD], "stopping": [], "disabled": [], "killed": True}
    assert ["kill", "--signal=SIGKILL", OLD] in systemd.calls
    assert systemd.units[OLD]["ActiveState"] == "inactive"
    assert systemd.units[OLD]["UnitFileState"] == "disabled"


def test_nothing_to_stop_is_nothing_done(systemd: ScriptedSystemd) -> None:
    assert activate.stop_others(systemd, [], timeout=None) == {
        "retired": [],
        "stopping": [],
        "disabled": [],
        "killed": False,
    }
    assert systemd.calls == []


@pytest.mark.parametrize(
    ("text", "unit_enabled", "removed"),
    [
        # deploykit's single worker of earlier versions, disabled by the step: its file goes.
        ("ExecStart=/usr/local/libexec/deploykit-release exec /srv/shop celery\n", False, True),
        # Still enabled (the step did not disable it): kept.
        ("ExecStart=/usr/local/libexec/deploykit-release exec /srv/shop celery\n", True, False),
        # A unit of that name somebody else wrote: never removed.
        ("ExecStart=/usr/bin/celery -A other worker\n", False, False),
    ],
)
def test_the_single_worker_unit_of_earlier_versions_is_removed_once_disabled(
    systemd: ScriptedSystemd,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    text: str,
    unit_enabled: bool,
    removed: bool,
) -> None:
    unit_file = tmp_path / "shop-worker.service"
    unit_file.write_text(f"[Service]\n{text}")
    monkeypatch.setattr(activate, "enabled", lambda unit: unit_enabled)
    path = activate.remove_plain_unit(systemd, "shop-worker@.service", unit_dir=str(tmp_path))
    assert path == (str(unit_file) if removed else "")
    assert unit_file.exists() is not removed
    # systemd forgets the file it loaded only after a reload.
    assert (["daemon-reload"] in systemd.calls) is removed


def test_no_single_worker_unit_is_nothing_done(systemd: ScriptedSystemd, tmp_path: Path) -> None:
    assert activate.remove_plain_unit(systemd, "shop-worker@.service", unit_dir=str(tmp_path)) == ""
    assert systemd.calls == []
