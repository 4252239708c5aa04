"""deploykit.remote and `deploykit exec`'s command line: patterns, commands, connection settings
read as Ansible reads them (ProxyJump included), bad input, and the report. The inventories are
small files in tmp_path, checked against the project's real roles. The only network traffic is to
loopback: a closed port and a listener that never answers, to prove the per-host error, jump host
and deadline paths; the lab's SSH is proven in tests/e2e/test_exec.py.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from deploykit import cli, remote
from deploykit.errors import BadInput
from deploykit.remote import ExecResult, HostResult, Jump, SshTarget

REPO = Path(__file__).resolve().parents[2]
ROLES = REPO / "roles"

GROUPS = {
    "lb": ["lb1"],
    "app": ["app1", "app2", "app3"],
    "worker": ["worker1"],
    "cache": ["cache1"],
    "docstore": ["db1"],
    "queue": ["queue1"],
}
ADDRESSES = {
    "lb1": "127.0.0.10",
    "app1": "127.0.0.20",
    "app2": "127.0.0.21",
    "app3": "127.0.0.22",
    "worker1": "127.0.0.30",
    "cache1": "127.0.0.40",
    "db1": "127.0.0.50",
    "queue1": "127.0.0.60",
}


def write_inventory(
    directory: Path,
    *,
    all_vars: dict[str, Any] | None = None,
    host_vars: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """A valid inventory of the six groups (app has three clones), every host on loopback."""
    hosts: dict[str, dict[str, Any]] = {
        name: {"ansible_host": address, **(host_vars or {}).get(name, {})}
        for name, address in ADDRESSES.items()
    }
    document = {
        "all": {
            "vars": {"ansible_user": "deploy", **(all_vars or {})},
            "hosts": hosts,
            "children": {
                group: {"hosts": dict.fromkeys(members)} for group, members in GROUPS.items()
            },
        }
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "hosts.yml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def public_key() -> str:
    """A fresh ed25519 public key, as known_hosts holds it ("ssh-ed25519 AAAA...")."""
    key = Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


@pytest.fixture
def known_hosts(tmp_path: Path) -> Path:
    path = tmp_path / "ssh" / "known_hosts"
    path.parent.mkdir()
    path.write_text(f"127.0.0.20 {public_key()}\n")
    return path


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "ssh" / "id_ed25519"
    path.parent.mkdir(exist_ok=True)
    path.write_text("not read before a connection\n")
    return path


def lab_like(
    tmp_path: Path,
    known_hosts: Path,
    key_file: Path,
    host_vars: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """The lab's way of connecting: root, a key, its own known_hosts, strict checking."""
    return write_inventory(
        tmp_path / "inventory",
        all_vars={
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(key_file),
            "ansible_ssh_common_args": f"-o UserKnownHostsFile={known_hosts} "
            "-o StrictHostKeyChecking=yes",
        },
        host_vars=host_vars,
    )


# --- patterns ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "hosts"),
    [
        ("app", ["app1", "app2", "app3"]),
        ("app2", ["app2"]),
        ("lb,app", ["lb1", "app1", "app2", "app3"]),
        ("app2, lb1 ,app", ["app2", "lb1", "app1", "app3"]),  # each host once, first mention
        ("all", ["lb1", "app1", "app2", "app3", "worker1", "cache1", "db1", "queue1"]),
        ("queue1,all", ["queue1", "lb1", "app1", "app2", "app3", "worker1", "cache1", "db1"]),
    ],
)
def test_a_pattern_names_groups_hosts_and_all(pattern: str, hosts: list[str]) -> None:
    assert remote.resolve_pattern(GROUPS, pattern) == hosts


def test_an_unknown_group_is_bad_input_naming_the_known_groups() -> None:
    with pytest.raises(BadInput) as caught:
        remote.resolve_pattern(GROUPS, "apps")
    assert str(caught.value) == (
        "no group or host named 'apps' in the inventory (did you mean 'app'?); known groups: "
        "app, cache, docstore, lb, queue, worker (or a host name, or all)"
    )
    assert caught.value.exit_code == 2


def test_every_unknown_name_is_listed() -> None:
    with pytest.raises(BadInput, match="named 'web', 'db9' in the inventory"):
        remote.resolve_pattern(GROUPS, "app,web,db9")


@pytest.mark.parametrize("pattern", ["", " ", "app,", ",app", "app,,lb"])
def test_an_empty_name_in_a_pattern_is_bad_input(pattern: str) -> None:
    with pytest.raises(BadInput, match="has an empty name"):
        remote.resolve_pattern(GROUPS, pattern)


# --- the command --------------------------------------------------------------------------------

EXEC_OPTIONS = cli.build_parser().parse_args(["exec", "app", "--", "true"]).exec_options


@pytest.mark.parametrize(
    ("words", "command"),
    [
        (["hostname"], "hostname"),
        (["test", '"$(hostname)"', "!=", "app2"], 'test "$(hostname)" != app2'),
        (["--", "cat", "/etc/os-release"], "cat /etc/os-release"),
        (["echo", "--", "--json"], "echo -- --json"),  # only a leading separator is exec's
        (["systemctl status 'shop-*' | head"], "systemctl status 'shop-*' | head"),
    ],
)
def test_the_command_words_are_joined_as_ssh_does(words: list[str], command: str) -> None:
    assert cli.exec_command(words, EXEC_OPTIONS) == command


@pytest.mark.parametrize("words", [[], ["--"], ["  "], ["--", ""]])
def test_an_empty_command_is_bad_input(words: list[str]) -> None:
    with pytest.raises(BadInput, match="no command given"):
        cli.exec_command(words, EXEC_OPTIONS)


def test_an_option_after_the_pattern_is_bad_input_not_a_remote_command() -> None:
    with pytest.raises(BadInput, match="--json after PATTERN would be sent to the hosts"):
        cli.exec_command(["--json", "--", "hostname"], EXEC_OPTIONS)


# --- the command line ---------------------------------------------------------------------------


def exec_parser() -> argparse.ArgumentParser:
    return cli.build_parser()


def test_exec_knows_its_own_options_to_refuse_them_after_the_pattern() -> None:
    assert {"-h", "--help", "-i", "--inventory", "--json", "--timeout", "--lines"} == EXEC_OPTIONS


def test_the_parser_keeps_everything_after_the_separator_for_the_host() -> None:
    args = exec_parser().parse_args(
        [
            "exec",
            "-i",
            "inv.yml",
            "--json",
            "--timeout",
            "2.5",
            "--lines",
            "0",
            "app",
            "--",
            "grep",
            "-c",
            "--",
            "-x",
            "/etc/hosts",
        ]
    )
    assert (args.inventory, args.json, args.timeout, args.lines) == ("inv.yml", True, 2.5, 0)
    assert args.pattern == "app"
    assert cli.exec_command(args.command, args.exec_options) == "grep -c -- -x /etc/hosts"
    assert args.func is cli.cmd_exec


def test_the_defaults_are_the_documented_ones() -> None:
    args = exec_parser().parse_args(["exec", "app", "--", "true"])
    assert (args.inventory, args.json, args.timeout, args.lines) == (None, False, 60.0, None)
    assert remote.DEFAULT_WORKERS == 25


@pytest.mark.parametrize(
    ("option", "said"),
    [
        (["--timeout", "0"], "seconds must be more than 0: '0'"),
        (["--timeout", "-1"], "seconds must be more than 0: '-1'"),
        (["--timeout", "soon"], "not a number of seconds: 'soon'"),
        (["--timeout", "inf"], "not a finite number of seconds: 'inf'"),
        (["--lines", "-1"], "expected a number of lines (0 or more), got '-1'"),
    ],
)
def test_bad_option_values_exit_2(
    option: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        exec_parser().parse_args(["exec", *option, "app", "--", "true"])
    assert caught.value.code == 2
    assert f"argument {option[0]}: {said}" in capsys.readouterr().err


# --- connection settings, as Ansible reads them -------------------------------------------------


def test_the_lab_way_of_connecting_is_read_from_the_inventory(
    tmp_path: Path, known_hosts: Path, key_file: Path
) -> None:
    path = lab_like(tmp_path, known_hosts, key_file)
    target = remote.read_targets(path, ["app2"])["app2"]
    assert target == SshTarget(
        host="app2",
        address="127.0.0.21",
        port=22,
        user="root",
        key_files=(key_file,),
        known_hosts=(known_hosts,),  # and only it: UserKnownHostsFile replaces ~/.ssh/known_hosts
        known_hosts_source="the UserKnownHostsFile set by ansible_ssh_common_args",
    )


def test_ansible_precedence_templates_and_aliases_are_ansibles(tmp_path: Path) -> None:
    path = write_inventory(
        tmp_path,
        all_vars={
            "ansible_port": "{{ 2200 + 22 }}",
            "ansible_user": "{{ deploy_user }}",
            "deploy_user": "ops",
        },
        host_vars={
            # ansible_ssh_host wins over ansible_host in Ansible's ssh plugin.
            "app1": {"ansible_ssh_host": "127.0.0.99"},
            "app2": {"ansible_host": "{{ '127.0.0.' ~ (7 * 3) }}", "ansible_ssh_user": "other"},
        },
    )
    targets = remote.read_targets(path, ["app1", "app2"])
    assert (targets["app1"].address, targets["app1"].port, targets["app1"].user) == (
        "127.0.0.99",
        2222,
        "ops",
    )
    assert (targets["app2"].address, targets["app2"].user) == ("127.0.0.21", "other")


def test_port_and_user_in_the_ssh_arguments_apply_only_where_no_variable_sets_them(
    tmp_path: Path,
) -> None:
    path = write_inventory(
        tmp_path,
        all_vars={"ansible_ssh_common_args": "-o Port=2022 -o User=admin -p 9"},
        host_vars={"app1": {"ansible_port": 22, "ansible_user": "root"}},
    )
    targets = remote.read_targets(path, ["app1", "app2"])
    assert (targets["app1"].port, targets["app1"].user) == (22, "root")
    # "deploy" comes from all:vars, so only the port is taken from the arguments (the first -o).
    assert (targets["app2"].port, targets["app2"].user) == (2022, "deploy")


def test_without_user_known_hosts_file_the_openssh_defaults_are_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "known_hosts").write_text("")
    monkeypatch.setenv("HOME", str(home))
    target = remote.read_targets(write_inventory(tmp_path / "inv"), ["lb1"])["lb1"]
    assert target.known_hosts[0] == home / ".ssh" / "known_hosts"
    assert "default known_hosts" in target.known_hosts_source


def test_a_named_known_hosts_file_that_does_not_exist_leaves_nothing_trusted(
    tmp_path: Path, key_file: Path
) -> None:
    path = lab_like(tmp_path, tmp_path / "missing_known_hosts", key_file)
    assert remote.read_targets(path, ["lb1"])["lb1"].known_hosts == ()


@pytest.mark.parametrize(
    ("args", "named"),
    [
        ("-o 'ProxyCommand ssh -W %h:%p bastion'", "ProxyCommand"),
        ("-oHostKeyAlias=app", "HostKeyAlias"),
        (
            "-J bastion -o ProxyCommand=nc\\ %h\\ %p -o HostKeyAlias=app",
            "ProxyCommand, HostKeyAlias",
        ),
    ],
)
def test_a_proxy_command_or_key_alias_is_refused_not_bypassed(
    tmp_path: Path, args: str, named: str
) -> None:
    path = write_inventory(tmp_path, host_vars={"app3": {"ansible_ssh_extra_args": args}})
    with pytest.raises(BadInput) as caught:
        remote.read_targets(path, ["app1", "app3"])
    assert str(caught.value) == (
        f"host 'app3': its ssh arguments use {named}, which deploykit exec does not support "
        "(it speaks ProxyJump); use `ansible` for this host"
    )


@pytest.mark.parametrize(
    ("args", "jumps"),
    [
        ("-o ProxyJump=bastion.example.com", (Jump("bastion.example.com"),)),
        ("-J ops@10.0.0.5:2222", (Jump("10.0.0.5", 2222, "ops"),)),
        ("-oProxyJump=ssh://a@b1:23,b2", (Jump("b1", 23, "a"), Jump("b2"))),
        ("-o 'ProxyJump [fd00::5]:2200'", (Jump("fd00::5", 2200),)),
        ("-J first -o ProxyJump=second", (Jump("first"),)),  # the first value wins, as in ssh(1)
        ("-o ProxyJump=none -J later", ()),
    ],
)
def test_a_proxy_jump_is_read_as_ssh_reads_it(
    tmp_path: Path, args: str, jumps: tuple[Jump, ...]
) -> None:
    path = write_inventory(tmp_path, host_vars={"app3": {"ansible_ssh_common_args": args}})
    targets = remote.read_targets(path, ["app1", "app3"])
    assert targets["app3"].jumps == jumps
    assert (targets["app3"].address, targets["app3"].port) == ("127.0.0.22", 22)
    assert targets["app1"].jumps == ()


@pytest.mark.parametrize("value", ["bastion:ssh", "bastion:70000", "a@@b", "bastion,"])
def test_a_proxy_jump_that_is_not_user_host_port_is_bad_input(tmp_path: Path, value: str) -> None:
    path = write_inventory(tmp_path, host_vars={"app3": {"ansible_ssh_extra_args": f"-J {value}"}})
    with pytest.raises(BadInput, match=r"host 'app3': the ProxyJump \(or -J\) in its ssh arg"):
        remote.read_targets(path, ["app3"])


def test_a_host_not_reached_over_ssh_is_refused(tmp_path: Path) -> None:
    path = write_inventory(tmp_path, host_vars={"db1": {"ansible_connection": "local"}})
    with pytest.raises(BadInput, match="host 'db1' is not reached over SSH"):
        remote.read_targets(path, ["db1"])


def test_a_missing_key_file_is_bad_input_without_its_path(
    tmp_path: Path, known_hosts: Path
) -> None:
    secret_path = tmp_path / "very-private-name" / "id_ed25519"
    path = lab_like(tmp_path, known_hosts, secret_path)
    with pytest.raises(BadInput) as caught:
        remote.read_targets(path, ["lb1"])
    assert "the file named by ansible_ssh_private_key_file does not exist" in str(caught.value)
    assert "very-private-name" not in str(caught.value)


def test_a_template_that_needs_the_vault_is_named_but_not_shown(tmp_path: Path) -> None:
    path = write_inventory(tmp_path, all_vars={"ansible_password": "{{ vault_ssh_password }}"})
    with pytest.raises(BadInput) as caught:
        remote.read_targets(path, ["app1"])
    message = str(caught.value)
    assert message.startswith("host 'app1': ansible_password is a template that cannot be rendered")
    assert "vault_ssh_password" not in message


def test_secrets_stay_out_of_repr_and_errors() -> None:
    target = SshTarget(
        host="app1",
        address="10.9.8.7",
        user="deploy",
        password="hunter2-long",
        passphrase="pass-phrase",
        key_files=(Path("/keys/id_app"),),
        jumps=(Jump("10.9.8.70", user="ops"),),
    )
    assert "hunter2-long" not in repr(target)
    assert "pass-phrase" not in repr(target)
    scrubbed = target.scrub(
        "Authentication (password hunter2-long) failed for deploy@10.9.8.7 with /keys/id_app "
        "via ops@10.9.8.70; deployment continues"
    )
    assert scrubbed == (
        "Authentication (password <password>) failed for <ansible_user>@<ansible_host> with "
        "<private key file> via <jump user>@<jump host>; deployment continues"
    )


def test_known_hosts_lines_are_read_as_openssh_reads_them(tmp_path: Path) -> None:
    first, second, other = public_key(), public_key(), public_key()
    hashed = paramiko.HostKeys.hash_host("127.0.0.30")
    (tmp_path / "user").write_text(
        "# a comment\n"
        "127.0.0.20 ssh-ed25519 AAAA-not-base64\n"  # paramiko alone would stop the whole file here
        f"127.0.0.20,[127.0.0.20]:2222 {first}\n"
        f"{hashed} {other}\n"
        f"@revoked 127.0.0.40 {other}\n"
    )
    (tmp_path / "global").write_text(f"127.0.0.20 {second}\n")  # later: the first entry stays
    keys = paramiko.HostKeys()
    remote._trust(keys, [tmp_path / "user", tmp_path / "global"])

    def held(name: str) -> str | None:
        found = keys.lookup(name)
        return None if found is None else f"ssh-ed25519 {found['ssh-ed25519'].get_base64()}"

    assert held("127.0.0.20") == first
    assert held("[127.0.0.20]:2222") == first
    assert held("127.0.0.30") == other
    assert held("127.0.0.40") is None


# --- bad input before any host is contacted ----------------------------------------------------


def test_a_missing_inventory_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInput) as caught:
        remote.targets_for(tmp_path / "nope.yml", "app", roles_dir=ROLES)
    assert str(caught.value).startswith(f"1 problem(s) in {tmp_path / 'nope.yml'}: nothing was run")
    assert "does not exist" in str(caught.value)


def test_an_inventory_check_rejects_is_bad_input_with_every_problem(tmp_path: Path) -> None:
    path = write_inventory(tmp_path, host_vars={"app1": {"ansible_port": "twenty-two"}})
    text = path.read_text().replace("    queue:\n      hosts:\n        queue1: null\n", "")
    path.write_text(text)
    with pytest.raises(BadInput) as caught:
        remote.targets_for(path, "app", roles_dir=ROLES)
    message = str(caught.value)
    assert message.startswith(f"3 problem(s) in {path}: nothing was run\n")
    assert "group 'queue': missing or empty" in message
    assert "host 'queue1': is in no deploykit group" in message
    assert "variable 'ansible_port' (host 'app1')" in message
    assert caught.value.hint == f"deploykit check -i {path}"


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["web", "--", "true"], "no group or host named 'web'"),
        (["app", "--", "  "], "no command given"),
        (["app", "--lines", "3", "--", "true"], "--lines after PATTERN would be sent to the hosts"),
    ],
)
def test_bad_input_exits_2_before_anything_runs(
    tmp_path: Path, words: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_inventory(tmp_path)
    assert cli.main(["exec", "-i", str(path), *words]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in " ".join(captured.err.split())


def test_a_timeout_that_is_not_a_positive_number_is_bad_input() -> None:
    with pytest.raises(BadInput, match="the timeout must be a positive number of seconds, not 0"):
        remote.run_on_targets([SshTarget("app1", "127.0.0.1")], "true", timeout=0.0)


# --- per-host failures, on loopback ---------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A TCP port on loopback that accepts connections and never says a word (no SSH banner)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


def test_an_unreachable_host_fails_alone_and_its_address_is_not_printed(
    tmp_path: Path, known_hosts: Path, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # app1 on a loopback port where nothing listens.
    app1 = {"ansible_host": "127.0.0.1", "ansible_port": closed_port()}
    path = lab_like(tmp_path, known_hosts, key_file, host_vars={"app1": app1})
    rc = cli.main(["exec", "-i", str(path), "--json", "--timeout", "10", "app1", "--", "true"])
    captured = capsys.readouterr()
    assert rc == 1
    assert json.loads(captured.out) == {
        "hosts": {
            "app1": {
                "rc": None,
                "stdout": "",
                "stderr": "",
                "error": "cannot connect to its SSH port: Connection refused",
            }
        },
        "failed": ["app1"],
    }
    assert "127.0.0.1" not in captured.out + captured.err


def test_hosts_sharing_an_address_each_get_their_result_in_order(
    known_hosts: Path, key_file: Path
) -> None:
    # Fabric's connections are equal when address, user and port are: the results stay apart, and
    # in the order given, one worker at a time too.
    port = closed_port()
    targets = [
        SshTarget(name, "127.0.0.1", port, "root", (key_file,), (known_hosts,))
        for name in ("app1", "app2", "app3")
    ]
    for workers in (1, 2, 25):
        result = remote.run_on_targets(targets, "true", timeout=5, workers=workers)
        assert [host.host for host in result.hosts] == ["app1", "app2", "app3"]
        assert {host.error for host in result.hosts} == {
            "cannot connect to its SSH port: Connection refused"
        }


def test_the_timeout_bounds_a_host_that_never_answers(
    tmp_path: Path, known_hosts: Path, key_file: Path, silent_listener: int
) -> None:
    silent = SshTarget(
        host="app1",
        address="127.0.0.1",
        port=silent_listener,
        user="root",
        key_files=(key_file,),
        known_hosts=(known_hosts,),
    )
    refused = SshTarget(
        host="app2",
        address="127.0.0.1",
        port=closed_port(),
        user="root",
        key_files=(key_file,),
        known_hosts=(known_hosts,),
    )
    started = time.monotonic()
    result = remote.run_on_targets([silent, refused], "true", timeout=1.0, workers=2)
    elapsed = time.monotonic() - started
    assert elapsed < 5, f"the 1 s deadline took {elapsed:.1f} s"
    assert [h.host for h in result.hosts] == ["app1", "app2"]  # the order given, not finishing
    assert result.hosts[0].error is not None
    assert result.hosts[0].error.startswith("timed out after 1 s while connecting")
    assert result.hosts[1].error == "cannot connect to its SSH port: Connection refused"


# --- jump hosts -----------------------------------------------------------------------------------


def test_a_host_is_reached_through_its_jump_hosts_each_key_checked(
    known_hosts: Path, key_file: Path
) -> None:
    target = SshTarget(
        "app1", "10.0.0.20", 2200, "root", (key_file,), (known_hosts,), password="pw-1",
        jumps=(Jump("bastion1", 2222, "ops"), Jump("bastion2")),
    )  # fmt: skip
    host = remote._connection(target, 10)
    second = host.gateway
    first = second.gateway
    assert [(c.host, c.port, c.user) for c in (first, second, host)] == [
        ("bastion1", 2222, "ops"),
        ("bastion2", 22, second.config.user),  # no user given: the local one, as ssh(1)
        ("10.0.0.20", 2200, "root"),
    ]
    assert first.gateway is None
    for connection in (first, second, host):
        assert isinstance(connection.client._policy, paramiko.RejectPolicy)
        assert connection.client.get_host_keys().lookup("127.0.0.20") is not None
        assert connection.connect_kwargs["key_filename"] == [str(key_file)]
        assert connection.forward_agent is False
    # The password is the host's: never sent to a jump host.
    assert [c.connect_kwargs.get("password") for c in (first, second, host)] == [None, None, "pw-1"]


def test_a_jump_host_that_cannot_be_reached_is_named_and_bounded(
    known_hosts: Path, key_file: Path, silent_listener: int
) -> None:
    # The host itself listens (silently): had the jump host been bypassed, app1 would time out.
    through_closed = SshTarget(
        "app1", "127.0.0.1", silent_listener, "root", (key_file,), (known_hosts,),
        jumps=(Jump("127.0.0.1", closed_port()),),
    )  # fmt: skip
    through_silent = SshTarget(
        "app2", "127.0.0.1", closed_port(), "root", (key_file,), (known_hosts,),
        jumps=(Jump("127.0.0.1", closed_port(), "ops"), Jump("127.0.0.1", silent_listener)),
    )  # fmt: skip
    started = time.monotonic()
    result = remote.run_on_targets([through_closed, through_silent], "true", timeout=1.0)
    assert time.monotonic() - started < 5
    assert result.hosts[0].error == (
        "its jump host 1: cannot connect to its SSH port: Connection refused"
    )
    assert result.hosts[1].error == (
        "its jump host 1: cannot connect to its SSH port: Connection refused"
    )
    jumping = SshTarget(
        "app3", "127.0.0.1", closed_port(), "root", (key_file,), (known_hosts,),
        jumps=(Jump("127.0.0.1", silent_listener),),
    )  # fmt: skip
    (host,) = remote.run_on_targets([jumping], "true", timeout=1.0).hosts
    assert host.error is not None
    assert host.error.startswith("timed out after 1 s while connecting")


# --- results and the report ---------------------------------------------------------------------

RESULT = ExecResult(
    (
        HostResult("app1", 0, "app1\n"),
        HostResult("app2", 1, "", "app2 is not welcome\n"),
        HostResult(
            "app3", None, error="refused: its host key does NOT match its known_hosts entry"
        ),
    )
)


def test_the_json_document_has_the_documented_shape() -> None:
    assert json.loads(json.dumps(RESULT.to_dict())) == {
        "hosts": {
            "app1": {"rc": 0, "stdout": "app1\n", "stderr": "", "error": None},
            "app2": {"rc": 1, "stdout": "", "stderr": "app2 is not welcome\n", "error": None},
            "app3": {
                "rc": None,
                "stdout": "",
                "stderr": "",
                "error": "refused: its host key does NOT match its known_hosts entry",
            },
        },
        "failed": ["app2", "app3"],
    }
    assert not RESULT.ok


def test_the_report_has_one_block_per_host_and_a_summary() -> None:
    assert cli.format_exec_report(RESULT).plain == (
        "app1  rc 0\n"
        "    app1\n"
        "app2  rc 1\n"
        "  stderr:\n"
        "    app2 is not welcome\n"
        "app3  error: refused: its host key does NOT match its known_hosts entry\n"
        "3 host(s): 1 ok, 2 failed: app2, app3"
    )


def test_the_report_keeps_the_last_lines_and_says_how_many_it_left_out() -> None:
    result = ExecResult(
        (HostResult("lb1", 0, "".join(f"{n}\n" for n in range(1, 31)), "w1\nw2\n"),)
    )
    assert cli.format_exec_report(result, lines=2).plain == (
        "lb1  rc 0\n"
        "    ... 28 earlier stdout line(s) not shown\n"
        "    29\n"
        "    30\n"
        "  stderr:\n"
        "    w1\n"
        "    w2\n"
        "1 host(s): all exited 0"
    )
    assert cli.format_exec_report(result, lines=0).plain == (
        "lb1  rc 0\n"
        "    ... 30 earlier stdout line(s) not shown\n"
        "    ... 2 earlier stderr line(s) not shown\n"
        "1 host(s): all exited 0"
    )


def test_the_report_shows_every_line_by_default() -> None:
    stdout = "".join(f"{n}\n" for n in range(1, 101))
    report = cli.format_exec_report(ExecResult((HostResult("lb1", 0, stdout, "w1\n"),))).plain
    assert report == (
        "lb1  rc 0\n"
        + "".join(f"    {n}\n" for n in range(1, 101))
        + "  stderr:\n    w1\n1 host(s): all exited 0"
    )


def test_the_report_shows_control_characters_instead_of_sending_them_to_the_terminal() -> None:
    result = ExecResult((HostResult("app1", 0, "\x1b[2J\x1b]0;owned\x07ok\tdone\n"),))
    assert cli.format_exec_report(result).plain.splitlines()[1] == (
        "    \\x1b[2J\\x1b]0;owned\\x07ok\tdone"
    )
