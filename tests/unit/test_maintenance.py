"""Maintenance mode's logic (module_utils/maintenance.py): the inputs it refuses, the map's entries
and their way back, the files, and the order of the runtime API's commits. The real HAProxy is in
tests/e2e/test_maintenance_mode.py."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from ansible_collections.deploykit.fleet.plugins.module_utils import maintenance as mm


def test_networks_are_normalised_without_repeats() -> None:
    assert mm.check_allow(["10.1.2.3", " 10.0.0.0/8 ", "10.1.2.3/32", "2001:db8::/32"]) == [
        "10.1.2.3/32",
        "10.0.0.0/8",
        "2001:db8::/32",
    ]
    # A host address with a prefix is taken as its network, as HAProxy would match it.
    assert mm.check_allow(["192.0.2.7/24"]) == ["192.0.2.0/24"]


@pytest.mark.parametrize(
    ("call", "phrase"),
    [
        (lambda: mm.check_allow(["office"]), "'office' is not an IP network"),
        (lambda: mm.check_message("\t \n"), "is empty"),
        (lambda: mm.check_message("x" * 501), "has 501 characters; at most 500"),
        (lambda: mm.check_message("bell\x07"), "control character"),
        (lambda: mm.check_retry_after(0), "give 1 to 86400 seconds"),
        (lambda: mm.check_retry_after(86401), "give 1 to 86400 seconds"),
    ],
)
def test_bad_inputs_are_refused_in_one_sentence(call, phrase: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(mm.Problem, match=phrase):
        call()


def test_the_message_is_one_word_in_the_map_and_comes_back_escaped_for_html() -> None:
    state = mm.wanted(True, message="Back at <b>noon</b>\nsoon", allow=["10.0.0.1"])
    values = mm.entries(state)
    assert all(len(value.split()) == 1 for value in values.values()), values
    assert base64.b64decode(values["message"]).decode() == "Back at &lt;b&gt;noon&lt;/b&gt; soon"
    assert values["state"] == "on" and values["pages"] == "served"
    again = mm.from_entries(values, state.allow)
    assert again == state
    assert again.message == "Back at <b>noon</b> soon"


def test_staying_on_keeps_since_and_off_is_the_defaults() -> None:
    first = mm.wanted(True, message="a")
    assert first.since
    later = mm.wanted(
        True, message="b", now=mm.Maintenance(enabled=True, since="2026-01-01T00:00:00Z")
    )
    assert later.since == "2026-01-01T00:00:00Z"
    assert later.same_as(mm.wanted(True, message="b")) and not later.same_as(first)
    assert mm.wanted(False) == mm.Maintenance()
    assert mm.from_entries({"state": "off", "since": "2026-01-01T00:00:00Z"}, []).since is None


def test_unreadable_entries_read_as_the_defaults() -> None:
    state = mm.from_entries({"state": "on", "message": "%%%", "retry_after": "soon"}, [])
    assert state.enabled
    assert (state.message, state.retry_after) == (mm.DEFAULT_MESSAGE, mm.DEFAULT_RETRY_AFTER)


def test_files_round_trip_and_are_replaced_readable_by_all(tmp_path: Path) -> None:
    map_file, allow_file = tmp_path / "m.map", tmp_path / "a.acl"
    assert mm.read_files(str(map_file), str(allow_file)) == mm.Maintenance()
    state = mm.wanted(True, message="x", allow=["10.0.0.0/8"], retry_after=60, pages=False)
    mm.write_files(state, str(map_file), str(allow_file))
    assert mm.read_files(str(map_file), str(allow_file)) == state
    assert {oct(p.stat().st_mode & 0o777) for p in (map_file, allow_file)} == {"0o644"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.acl", "m.map"]


class FakeRuntime:
    """The runtime API's answers to prepare, add and commit; records every command sent."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def __call__(self, socket: str, command: str) -> str:
        self.sent.append(command)
        return "New version created: 7\n" if command.startswith("prepare") else "\n"


@pytest.mark.parametrize(("enabled", "first"), [(True, "acl"), (False, "map")])
def test_turning_on_commits_the_networks_first_and_off_the_state_first(
    monkeypatch: pytest.MonkeyPatch, enabled: bool, first: str
) -> None:
    fake = FakeRuntime()
    monkeypatch.setattr(mm, "runtime", fake)
    mm.apply_runtime("/sock", mm.wanted(enabled, allow=["10.0.0.0/8"] if enabled else ()), "M", "A")
    commits = [c.split("; ")[-1] for c in fake.sent if "commit" in c]
    assert [c.split()[1] for c in commits] == [first, "map" if first == "acl" else "acl"]
    # Off empties the allowed networks: a new version with no entry.
    acl = next(c for c in fake.sent if "commit acl" in c)
    assert acl == ("add acl @7 A 10.0.0.0/8; commit acl @7 A" if enabled else "commit acl @7 A")


def test_a_refused_command_is_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mm, "runtime", lambda socket, command: "Unknown map identifier.\n")
    with pytest.raises(mm.Failure, match="Unknown map identifier"):
        mm.read_runtime("/sock")
