"""The lab's planning and generated files, without an engine."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploykit import lab
from deploykit.errors import BadInput, LabError


def test_full_profile_is_the_default_topology() -> None:
    plans = {p.name: p for p in lab.LabSpec().hosts()}
    assert set(plans) == {"lb1", "app1", "app2", "app3", "worker1", "cache1", "db1", "queue1"}
    assert plans["lb1"].groups == ("lb",)
    assert plans["db1"].groups == ("docstore",)
    assert plans["app1"].address == "172.30.99.20"


def test_more_clones_never_renumber_the_other_hosts() -> None:
    three = {p.name: p.address for p in lab.LabSpec(app_clones=3).hosts()}
    twelve = {p.name: p.address for p in lab.LabSpec(app_clones=12).hosts()}
    assert {name: twelve[name] for name in three} == three
    assert twelve["app12"] == "172.30.99.31"
    assert len(set(twelve.values())) == len(twelve)


def test_small_profile_puts_the_services_on_one_host() -> None:
    plans = lab.LabSpec(profile="small").hosts()
    assert [p.name for p in plans] == ["lb1", "app1", "backend1"]
    assert plans[2].groups == ("worker", "cache", "docstore", "queue")


def test_ha_profile_has_no_single_point_of_failure() -> None:
    spec = lab.LabSpec(profile="ha")
    plans = spec.hosts()
    groups: dict[str, list[str]] = {}
    for plan in plans:
        for group in plan.groups:
            groups.setdefault(group, []).append(plan.name)
    assert groups == {
        "lb": ["lb1", "lb2"],
        "app": ["app1", "app2", "app3"],
        "cache": ["cache1", "cache2", "cache3"],
        "docstore": ["db1", "db2"],
        "queue": ["queue1", "queue2", "queue3"],
        "worker": ["worker1", "worker2"],
    }
    # The full profile's hosts keep their addresses; every address is distinct.
    full = {p.name: p.address for p in lab.LabSpec().hosts()}
    ha = {p.name: p.address for p in plans}
    assert {name: ha[name] for name in full} == full
    assert len(set(ha.values())) == len(ha)
    assert spec.virtual_address() == "172.30.99.254/24"
    assert spec.virtual_address().split("/")[0] not in ha.values()
    assert spec.profile_vars() == {
        "keepalived_virtual_address": "172.30.99.254/24",
        "redis_sentinel": True,
        "rabbitmq_cluster": True,
        "postgresql_replication": True,
    }
    assert lab.LabSpec().profile_vars() == {}


def test_ha_inventory_turns_on_each_tiers_redundancy(tmp_path: Path) -> None:
    spec = lab.LabSpec(profile="ha", subnet="10.9.0.0/16")
    text = lab.render_inventory(
        spec.hosts(),
        private_key=tmp_path / "id",
        known_hosts=tmp_path / "kh",
        subnet=spec.subnet,
        profile_vars=spec.profile_vars(),
    )
    variables = yaml.safe_load(text)["all"]["vars"]
    assert variables["keepalived_virtual_address"] == "10.9.0.254/16"
    assert variables["redis_sentinel"] is True
    assert variables["rabbitmq_cluster"] is True
    assert variables["postgresql_replication"] is True


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (lab.LabSpec(app_clones=0), "--app-clones 0: give a number from 1 to 100"),
        (lab.LabSpec(profile="huge"), "--profile 'huge': choose one of full, small, ha"),
        (
            lab.LabSpec(subnet="10.0.0.0/28"),
            "--subnet '10.0.0.0/28': give an IPv4 network of /24 or larger such as 172.30.99.0/24",
        ),
        (
            lab.LabSpec(subnet="banana"),
            "--subnet 'banana': 'banana' does not appear to be an IPv4 or IPv6 network; give an "
            "IPv4 network such as 172.30.99.0/24",
        ),
    ],
)
def test_bad_lab_options_are_refused(spec: lab.LabSpec, message: str) -> None:
    with pytest.raises(BadInput) as raised:
        spec.hosts()
    assert str(raised.value) == message


def test_inventory_defines_each_host_once_and_lists_its_groups(tmp_path: Path) -> None:
    plans = lab.LabSpec(profile="small").hosts()
    text = lab.render_inventory(
        plans, private_key=tmp_path / "id", known_hosts=tmp_path / "known_hosts"
    )
    assert text.startswith("# Written by `deploykit lab up`")
    document = yaml.safe_load(text)["all"]
    assert document["hosts"]["backend1"] == {
        "ansible_host": "172.30.99.11",
        "deploykit_private_address": "172.30.99.11",
    }
    for group in ("worker", "cache", "docstore", "queue"):
        assert list(document["children"][group]["hosts"]) == ["backend1"]
    assert document["vars"]["ansible_user"] == "root"
    assert "StrictHostKeyChecking=yes" in document["vars"]["ansible_ssh_common_args"]
    assert str(tmp_path / "known_hosts") in document["vars"]["ansible_ssh_common_args"]


def test_the_written_inventory_is_read_by_ansible(tmp_path: Path) -> None:
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        lab.render_inventory(
            lab.LabSpec().hosts(), private_key=tmp_path / "id", known_hosts=tmp_path / "kh"
        )
    )
    proc = subprocess.run(
        [Path(sys.executable).parent / "ansible-inventory", "-i", str(inventory), "--graph"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "@docstore:\n  |  |--db1" in proc.stdout
    assert "|--app3" in proc.stdout


def test_key_pair_is_generated_once_and_private(tmp_path: Path) -> None:
    private, public = lab.ensure_key_pair(tmp_path / ".ssh")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / ".ssh").stat().st_mode) == 0o700
    assert public.startswith("ssh-ed25519 ")
    assert private.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    again, public_again = lab.ensure_key_pair(tmp_path / ".ssh")
    assert (again, public_again) == (private, public)
    # ssh-keygen accepts the key and derives the same public key from it.
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(private)], capture_output=True, text=True, check=True
    )
    assert derived.stdout.split()[:2] == public.split()[:2]


# --- the lab's secrets: created private, never widened then narrowed ------------------------------

# What the process does to files, seen by Python's audit hooks (PEP 578): every open (the builtin
# open's mode is a string, os.open's is None) and every chmod by path. A hook cannot be removed:
# it records only while a test has pushed a list.
_AUDIT_SINKS: list[list[tuple[str, tuple[Any, ...]]]] = []
_AUDIT_HOOKED: list[bool] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _AUDIT_SINKS and event in ("open", "os.chmod"):
        _AUDIT_SINKS[-1].append((event, args))


@pytest.fixture
def audited() -> Iterator[list[tuple[str, tuple[Any, ...]]]]:
    if not _AUDIT_HOOKED:
        sys.addaudithook(_audit)
        _AUDIT_HOOKED.append(True)
    events: list[tuple[str, tuple[Any, ...]]] = []
    _AUDIT_SINKS.append(events)
    try:
        yield events
    finally:
        _AUDIT_SINKS.remove(events)


def _in(directory: Path, path: object) -> bool:
    if not isinstance(path, (str, bytes, os.PathLike)):
        return False  # a file descriptor (os.fchmod on the open file)
    return Path(os.fsdecode(path)).parent == directory


def test_the_lab_secrets_are_created_private_whatever_the_umask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, audited: list[tuple[str, tuple[Any, ...]]]
) -> None:
    path = lab.secrets_file(tmp_path)
    directory = path.parent
    created: list[tuple[Path, int, int]] = []  # every os.open in the directory: path, flags, mode
    real_open = os.open

    def recording_open(file: Any, flags: int, mode: int = 0o777, **kwargs: Any) -> int:
        if _in(directory, file):
            created.append((Path(os.fsdecode(file)), flags, mode))
        return real_open(file, flags, mode, **kwargs)

    monkeypatch.setattr(os, "open", recording_open)
    umask = os.umask(0o000)  # nothing narrows what the code asks for
    try:
        written, changed = lab.ensure_lab_secrets(tmp_path)
    finally:
        os.umask(umask)
    assert (written, changed) == (path, True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert set(yaml.safe_load(path.read_text())) == set(lab.LAB_SECRETS)
    assert [p.name for p in directory.iterdir()] == [path.name]  # no temporary file left
    # Written through one new file only, created exclusively (never a file or a link planted
    # under its name) with no permission beyond 0600 ...
    writes = [
        (event, args)
        for event, args in audited
        if event == "open" and _in(directory, args[0]) and args[2] & (os.O_WRONLY | os.O_RDWR)
    ]
    assert writes and all(args[1] is None for _, args in writes), writes  # os.open, not open()
    assert len(created) == 1, created
    temporary, flags, mode = created[0]
    assert temporary != path and flags & os.O_CREAT and flags & os.O_EXCL
    assert mode & ~0o600 == 0, oct(mode)
    # ... and never chmod-ed by name after it was written.
    assert not [args for event, args in audited if event == "os.chmod" and _in(directory, args[0])]


def test_the_lab_secrets_are_kept_and_a_loose_file_is_made_private(tmp_path: Path) -> None:
    path, changed = lab.ensure_lab_secrets(tmp_path)
    first = yaml.safe_load(path.read_text())
    assert changed
    assert lab.ensure_lab_secrets(tmp_path) == (path, False)
    # A file an older deploykit left readable by others is written again, 0600, same values.
    path.chmod(0o644)
    assert lab.ensure_lab_secrets(tmp_path) == (path, True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert yaml.safe_load(path.read_text()) == first


def test_image_tag_follows_the_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    tag = lab.image_tag()
    assert tag.startswith("deploykit/debian:12-")
    monkeypatch.setitem(lab.IMAGE_RECIPE, "packages", [*lab.IMAGE_RECIPE["packages"], "vim"])
    assert lab.image_tag() != tag


def test_the_image_leaves_baked_services_disabled_and_shares_no_cookie(tmp_path: Path) -> None:
    """What debootstrap's maintainer scripts enabled for a baked service is disabled (its role
    enables it), the other units stay; the baked Erlang cookie goes, a first-boot unit makes one."""
    rootfs = tmp_path / "rootfs"
    system = rootfs / "etc/systemd/system"
    for directory in ("multi-user.target.wants", "sockets.target.wants"):
        (system / directory).mkdir(parents=True)
    for directory in ("etc/apt", "etc/ssh/sshd_config.d", "var/lib/dbus", "root"):
        (rootfs / directory).mkdir(parents=True)
    (rootfs / "var/lib/rabbitmq").mkdir(parents=True)
    (rootfs / "var/lib/rabbitmq/.erlang.cookie").write_text("baked\n")
    links = {
        "multi-user.target.wants/nginx.service": "/lib/systemd/system/nginx.service",
        "multi-user.target.wants/redis-server.service": "/lib/systemd/system/redis-server.service",
        "redis.service": "/lib/systemd/system/redis-server.service",
        "sockets.target.wants/epmd.socket": "/lib/systemd/system/epmd.socket",
        "multi-user.target.wants/cron.service": "/lib/systemd/system/cron.service",
    }
    for link, target in links.items():
        (system / link).symlink_to(target)
    lab._configure_rootfs(rootfs)
    left = sorted(str(p.relative_to(system)) for p in system.rglob("*") if p.is_symlink())
    assert left == [
        "multi-user.target.wants/cron.service",
        "multi-user.target.wants/deploykit-rabbitmq-cookie.service",
        "multi-user.target.wants/deploykit-ssh-hostkeys.service",
    ]
    assert not (rootfs / "var/lib/rabbitmq/.erlang.cookie").exists()
    unit = (system / "deploykit-rabbitmq-cookie.service").read_text()
    assert "ConditionPathExists=!/var/lib/rabbitmq/.erlang.cookie" in unit
    assert "Before=rabbitmq-server.service" in unit


def test_no_engine_says_how_to_start_one(tmp_path: Path) -> None:
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    proc = subprocess.run(
        [sys.executable, "-m", "deploykit", "lab", "status"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 1
    assert "error: no Docker engine answers" in proc.stderr
    assert "apt-get install -y docker.io" in proc.stderr


def test_building_the_image_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(LabError) as raised:
        lab._check_can_debootstrap()
    assert str(raised.value).startswith("building the lab's base image needs root")


def test_building_the_image_needs_debootstrap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(LabError) as raised:
        lab._check_can_debootstrap()
    assert str(raised.value) == (
        "debootstrap is not installed; it builds the lab's base image offline\n"
        "  hint: apt-get install -y debootstrap"
    )
