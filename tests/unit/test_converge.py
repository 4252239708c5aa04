"""module_utils/converge.py: when site.yml may skip a role on a host (real files in a temporary
directory; services and packages are asked of this machine's systemctl and dpkg in the lab's
tests, tests/e2e/test_provision.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ansible_collections.deploykit.fleet.plugins.filter.fingerprint import (
    configuration_fingerprint,
)
from ansible_collections.deploykit.fleet.plugins.module_utils import converge


@pytest.fixture
def made(tmp_path: Path) -> dict[str, Path]:
    """What a role made: a file, a directory with a drop-in, and a path it removed."""
    config = tmp_path / "etc" / "thing.conf"
    dropins = tmp_path / "etc" / "thing.service.d"
    dropins.mkdir(parents=True)
    config.write_text("port 1\n")
    (dropins / "deploykit.conf").write_text("[Service]\n")
    return {"config": config, "dropins": dropins, "removed": tmp_path / "etc" / "old.conf"}


def record_of(made: dict[str, Path], fingerprint: str = "f1") -> dict[str, object]:
    paths = [str(p) for p in made.values()]
    return {"role": "thing", "fingerprint": fingerprint, **converge.observe(paths, [], [])}


def test_a_host_as_recorded_is_current(made: dict[str, Path]) -> None:
    assert converge.difference(record_of(made), "f1") is None


def test_no_record_or_other_inputs_converge(made: dict[str, Path]) -> None:
    assert converge.difference(None, "f1") == "no record of a complete converge"
    assert "inputs changed" in str(converge.difference(record_of(made), "f2"))


@pytest.mark.parametrize(
    "change",
    ["content", "mode", "dropin added", "dropin removed", "removed path back", "file gone"],
)
def test_what_changed_on_the_host_is_named(made: dict[str, Path], change: str) -> None:
    record = record_of(made)
    dropin = made["dropins"] / "deploykit.conf"
    changed = {
        "content": (made["config"], lambda: made["config"].write_text("port 2\n")),
        "mode": (made["config"], lambda: made["config"].chmod(0o666)),
        "dropin added": (
            made["dropins"] / "extra.conf",
            lambda: (made["dropins"] / "extra.conf").write_text(""),
        ),
        "dropin removed": (dropin, dropin.unlink),
        "removed path back": (made["removed"], lambda: made["removed"].write_text("")),
        "file gone": (made["config"], made["config"].unlink),
    }
    path, act = changed[change]
    act()
    reason = converge.difference(record, "f1")
    if change == "dropin added":
        # Not the role's: a full converge would leave it as it is, so it is no reason to run one.
        assert reason is None
        return
    assert reason == f"{path} changed since the last converge"


def test_a_directory_is_described_entry_by_entry(made: dict[str, Path]) -> None:
    seen = converge.observe_paths([str(made["dropins"])])
    assert set(seen) == {str(made["dropins"]), str(made["dropins"] / "deploykit.conf")}
    assert seen[str(made["dropins"])][0] == "dir"
    kind, digest, mode, uid, gid = seen[str(made["dropins"] / "deploykit.conf")]
    dropin = (made["dropins"] / "deploykit.conf").stat()
    assert (kind, mode, uid, gid) == ("file", dropin.st_mode & 0o7777, os.getuid(), os.getgid())
    assert len(digest) == 64


def test_a_link_is_described_by_its_target(tmp_path: Path) -> None:
    link = tmp_path / "localtime"
    link.symlink_to("/usr/share/zoneinfo/Etc/UTC")
    assert converge.observe_paths([str(link)])[str(link)] == ["link", "/usr/share/zoneinfo/Etc/UTC"]


def test_a_data_directory_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(converge, "MAX_PATHS", 5)
    for n in range(10):
        (tmp_path / f"row{n}").write_text("")
    with pytest.raises(converge.ConvergeProblem, match="not a data directory"):
        converge.observe_paths([str(tmp_path)])


def test_the_record_is_root_only_written_once_and_removed(
    tmp_path: Path, made: dict[str, Path]
) -> None:
    record = record_of(made)
    directory = str(tmp_path / "records")
    assert converge.write_record("thing", record, directory) is True
    assert converge.write_record("thing", record, directory) is False
    path = converge.record_path("thing", directory)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    assert converge.read_record("thing", directory) == json.loads(path.read_text())
    assert converge.remove_record("thing", directory) is True
    assert converge.read_record("thing", directory) is None
    path.write_text("{not json")
    assert converge.read_record("thing", directory) is None


@pytest.mark.parametrize("name", ["", "../etc/passwd", ".hidden", "a/b"])
def test_a_record_is_named_by_a_role(name: str) -> None:
    with pytest.raises(converge.ConvergeProblem):
        converge.record_path(name)


def test_the_code_digest_is_the_same_in_another_checkout(tmp_path: Path) -> None:
    for checkout in ("one", "two"):
        role = tmp_path / checkout / "roles" / "thing" / "tasks"
        role.mkdir(parents=True)
        (role / "main.yml").write_text("---\n")
        (role.parent / "__pycache__").mkdir()
        (role.parent / "__pycache__" / "x.pyc").write_bytes(os.urandom(8))
    one = converge.tree_digest([tmp_path / "one" / "roles" / "thing"])
    assert one == converge.tree_digest([tmp_path / "two" / "roles" / "thing"])
    (tmp_path / "two" / "roles" / "thing" / "tasks" / "main.yml").write_text("---\n# x\n")
    assert one != converge.tree_digest([tmp_path / "two" / "roles" / "thing"])


def test_the_fingerprint_follows_every_input_and_hides_them() -> None:
    inputs = {"vars": {"redis_password": "s3cret-value"}, "groups": {"all": ["a"]}}
    first = converge.fingerprint(inputs)
    assert "s3cret" not in first and len(first) == 64
    assert first == converge.fingerprint(json.loads(json.dumps(inputs)))
    assert first != converge.fingerprint({**inputs, "vars": {"redis_password": "other"}})


def test_every_role_s_variables_are_inputs_and_the_switch_to_converge_in_full_is_not() -> None:
    roles = [
        p.name for p in (Path(__file__).resolve().parents[2] / "roles").iterdir() if p.is_dir()
    ]
    assert roles
    assert all(converge.is_input(f"{role}_port") for role in roles), roles
    assert converge.is_input("deploykit_private_address")
    assert not converge.is_input("deploykit_converge_full")
    assert not converge.is_input("ansible_host") and not converge.is_input("__redis_conf_file")


def test_the_configuration_fingerprint_follows_the_inventory_not_other_variables() -> None:
    groups = {"all": ["lb1", "app1"], "lb": ["lb1"], "app": ["app1"]}
    hostvars = {
        "lb1": {"haproxy_check_inter": 500, "ansible_host": "10.0.0.1", "unrelated": 1},
        "app1": {"app_port": 8000, "ansible_host": "10.0.0.2"},
    }
    first = configuration_fingerprint("code", hostvars, groups, "lb1")
    assert len(first) == 64
    assert configuration_fingerprint("", hostvars, groups, "lb1") == ""
    changed = {
        "a variable of a role": {**hostvars, "lb1": {**hostvars["lb1"], "haproxy_check_inter": 1}},
        "a peer's address": {**hostvars, "app1": {**hostvars["app1"], "ansible_host": "10.0.0.9"}},
    }
    for what, other in changed.items():
        assert configuration_fingerprint("code", other, groups, "lb1") != first, what
    assert configuration_fingerprint("other code", hostvars, groups, "lb1") != first
    assert configuration_fingerprint("code", hostvars, {**groups, "app": []}, "lb1") != first
    unrelated = {
        **hostvars,
        "lb1": {**hostvars["lb1"], "unrelated": 2, "deploykit_converge_full": 1},
    }
    assert configuration_fingerprint("code", unrelated, groups, "lb1") == first
