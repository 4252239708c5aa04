"""The controller's client of the ledger's helper over SSH (ledger_ssh.py), with no host: what
it runs on the balancer and with what on stdin, as root and as another user, what it takes as an
answer, and when it gives up (once, saying why) so that the rollout asks through Ansible."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.deploykit.fleet.plugins.module_utils.ledger import HELPER
from deploykit import ledger_ssh, remote
from deploykit.errors import BadInput


class FakeHost:
    """remote.read_targets and remote.run_with_input for one balancer, recorded."""

    def __init__(self, user: str | None, done: remote.HostResult) -> None:
        self.user, self.done = user, done
        self.ran: list[tuple[str, str, float]] = []

    def read_targets(self, inventory: Path, hosts: list[str]) -> dict[str, remote.SshTarget]:
        return {host: remote.SshTarget(host, "192.0.2.10", user=self.user) for host in hosts}

    def run_with_input(
        self, target: remote.SshTarget, command: str, data: str, *, timeout: float
    ) -> remote.HostResult:
        self.ran.append((command, data, timeout))
        return self.done


def client(
    monkeypatch: pytest.MonkeyPatch, host: FakeHost, lines: list[str]
) -> ledger_ssh.LedgerOverSsh:
    monkeypatch.setattr(remote, "read_targets", host.read_targets)
    monkeypatch.setattr(remote, "run_with_input", host.run_with_input)
    return ledger_ssh.LedgerOverSsh(Path("hosts.yml"), "/srv/ledger dir", log=lines.append)


@pytest.mark.parametrize(("user", "prefix"), [("root", []), ("deploy", ["sudo", "-n"])])
def test_the_request_goes_on_stdin_to_the_helper_as_root(
    monkeypatch: pytest.MonkeyPatch, user: str, prefix: list[str]
) -> None:
    answer = {"extended": False, "holder": None}
    host = FakeHost(user, remote.HostResult("lb1", 1, json.dumps(answer)))
    over_ssh = client(monkeypatch, host, [])
    request = {"command": "lock renew", "token": "secret-token"}
    assert over_ssh.ask("lb1", request) == answer  # exit 1: refused, still an answer
    ((command, data, timeout),) = host.ran
    assert shlex.split(command) == [*prefix, HELPER, "--dir", "/srv/ledger dir", "call"]
    assert "secret-token" not in command and json.loads(data) == request
    assert timeout == ledger_ssh.CALL_TIMEOUT and over_ssh.given_up is None


@pytest.mark.parametrize(
    ("done", "said"),
    [
        (remote.HostResult("lb1", None, error="timed out after 10 s"), "lb1: timed out after 10 s"),
        (
            remote.HostResult("lb1", 1, "", "sudo: a password is required\n"),
            "lb1: exit 1: sudo: a password is required",
        ),
        (
            remote.HostResult("lb1", 127, "", "sh: 1: /usr/local/libexec/x: not found\n"),
            "lb1: exit 127: sh: 1: /usr/local/libexec/x: not found",
        ),
        (remote.HostResult("lb1", 0, "{"), "its answer is not JSON"),
        (remote.HostResult("lb1", 0, "[]"), "its answer is not a JSON object"),
    ],
)
def test_a_helper_that_cannot_be_asked_is_given_up_once_saying_why(
    monkeypatch: pytest.MonkeyPatch, done: remote.HostResult, said: str
) -> None:
    host = FakeHost("root", done)
    lines: list[str] = []
    over_ssh = client(monkeypatch, host, lines)
    assert over_ssh.ask("lb1", {"command": "lock renew", "token": "t"}) is None
    assert over_ssh.given_up is not None and said in over_ssh.given_up
    assert len(lines) == 1 and "through Ansible" in lines[0] and said in lines[0]
    assert over_ssh.ask("lb1", {"command": "finish", "record": {}, "token": "t"}) is None
    assert len(host.ran) == 1 and len(lines) == 1
    # A call alone (a copy of the history) is still asked, and gives up nothing more.
    given_up = over_ssh.given_up
    assert over_ssh.ask("lb2", {"command": "history append", "record": {}}, alone=True) is None
    assert len(host.ran) == 2 and len(lines) == 1 and over_ssh.given_up == given_up


def test_a_call_alone_that_fails_does_not_give_up(monkeypatch: pytest.MonkeyPatch) -> None:
    host = FakeHost("root", remote.HostResult("lb2", None, error="timed out after 10 s"))
    lines: list[str] = []
    over_ssh = client(monkeypatch, host, lines)
    assert over_ssh.ask("lb2", {"command": "history append", "record": {}}, alone=True) is None
    assert over_ssh.given_up is None and lines == []


def test_settings_exec_cannot_honour_leave_it_to_ansible(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(inventory: Path, hosts: list[str]) -> dict[str, Any]:
        raise BadInput("host 'lb1': ProxyCommand is not supported")

    monkeypatch.setattr(remote, "read_targets", refused)
    lines: list[str] = []
    over_ssh = ledger_ssh.LedgerOverSsh(Path("hosts.yml"), "/d", log=lines.append)
    assert over_ssh.ask("lb1", {"command": "lock renew", "token": "t"}) is None
    assert "ProxyCommand" in (over_ssh.given_up or "") and len(lines) == 1
