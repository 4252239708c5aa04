"""Commands on the inventory's hosts over SSH with Fabric, in parallel: ``deploykit exec``, and
the connections of ``deploykit logs``.

A host is reached as ``ansible`` reaches it (:func:`deploykit.inventory.ssh_options`), through
the jump hosts of a ``ProxyJump``/``-J`` in its ssh arguments. Unlike ``ansible``, every host key
(the jump hosts' too) is checked against the known_hosts files those arguments name (else
OpenSSH's defaults) and an unknown key is refused, whatever ``StrictHostKeyChecking`` says;
``~/.ssh/config`` is not read and ``ProxyCommand`` is refused. No inventory value is printed
(errors are scrubbed of them) and the hosts' control characters are shown escaped.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import socket
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Final

import paramiko
from fabric import Config, Connection, ThreadingGroup
from fabric.exceptions import GroupException

from deploykit import inventory
from deploykit.errors import BadInput
from deploykit.project import project_root

#: Hosts contacted at once: ansible.cfg's ``forks``, so exec and a playbook load the fleet alike.
DEFAULT_WORKERS: Final = 25
#: Seconds one host may take, connection included, before it is reported as timed out.
DEFAULT_TIMEOUT: Final = 60.0

_PORT: Final = inventory.DEFAULT_SSH_PORT
# OpenSSH's known_hosts files when the ssh arguments name none.
_KNOWN_HOSTS: Final = {
    "userknownhostsfile": "~/.ssh/known_hosts ~/.ssh/known_hosts2",
    "globalknownhostsfile": "/etc/ssh/ssh_known_hosts /etc/ssh/ssh_known_hosts2",
}
_DEFAULT_SOURCE: Final = "the default known_hosts files (~/.ssh/known_hosts)"
# ssh(1) flags that take a value (their value is never mistaken for a flag), and the options
# the ones read here set.
_FLAGS_WITH_VALUE: Final = frozenset("BbcDEeFIiJLlmOoPpQRSWw")
_FLAG_OPTIONS: Final = {"p": "port", "l": "user", "J": "proxyjump", "i": "identityfile"}
# ProxyCommand runs a program whose host-key checks exec cannot make; HostKeyAlias looks the key
# up under another name. Connecting directly instead would bypass what they ask for.
_REFUSED: Final = {"proxycommand": "ProxyCommand", "hostkeyalias": "HostKeyAlias"}
_JUMP: Final = re.compile(
    r"(?:ssh://)?(?:(?P<user>[^@]+)@)?(?P<host>\[[^]]+]|[^:@]+)(?::(?P<port>\d+))?"
)
# A host must not move the operator's cursor, retitle the window or hide lines.
_CONTROL_CHARACTERS: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class HostResult:
    """What one host did: ``rc`` is None when the command did not finish (``error`` says why)."""

    host: str
    rc: int | None
    stdout: str = ""
    stderr: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.rc == 0

    def to_dict(self) -> dict[str, Any]:
        return {"rc": self.rc, "stdout": self.stdout, "stderr": self.stderr, "error": self.error}


@dataclass(frozen=True)
class ExecResult:
    """Every host's result, in the order the pattern named them."""

    hosts: tuple[HostResult, ...]

    @property
    def failed(self) -> list[str]:
        """Hosts that exited non-zero, timed out or could not be reached."""
        return [result.host for result in self.hosts if not result.ok]

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        """``--json``: ``{"hosts": {host: {rc, stdout, stderr, error}}, "failed": [hosts]}``."""
        return {"hosts": {r.host: r.to_dict() for r in self.hosts}, "failed": self.failed}


def resolve_pattern(groups: Mapping[str, Sequence[str]], pattern: str) -> list[str]:
    """The hosts ``pattern`` names (groups, hosts and ``all``, separated by commas), each once, in
    order. Raises :class:`BadInput` naming the known groups when a name is none of those."""
    all_hosts = list(dict.fromkeys(host for hosts in groups.values() for host in hosts))
    names = [name.strip() for name in pattern.split(",")]
    if not pattern.strip() or not all(names):
        raise BadInput(
            f"the host pattern {pattern!r} has an empty name; give a group, a host or 'all', "
            "several separated by commas (e.g. app,worker)"
        )
    unknown = [n for n in names if n != "all" and n not in groups and n not in all_hosts]
    if unknown:
        quoted = ", ".join(f"'{name}'" for name in unknown)
        suggestion = inventory.did_you_mean(unknown[0], [*sorted(groups), *all_hosts, "all"])
        raise BadInput(
            f"no group or host named {quoted} in the inventory{suggestion}; known groups: "
            f"{', '.join(sorted(groups)) or 'none'} (or a host name, or all)"
        )
    selected = [h for n in names for h in (all_hosts if n == "all" else groups.get(n, [n]))]
    if not selected:
        raise BadInput(f"the host pattern {pattern!r} matches no host; add hosts to its groups")
    return list(dict.fromkeys(selected))


@dataclass(frozen=True)
class Jump:
    """A jump host, ``[user@]host[:port]``: as with ssh(1), its user is not the host's."""

    address: str
    port: int = _PORT
    user: str | None = None  # None: the local user name


@dataclass(frozen=True)
class SshTarget:
    """How one host is reached. Secrets never appear in its repr."""

    host: str  # the inventory name
    address: str
    port: int = _PORT
    user: str | None = None  # None: the local user name, as ssh(1)
    key_files: tuple[Path, ...] = ()  # empty: the SSH agent and ~/.ssh/id_*, as ssh(1)
    known_hosts: tuple[Path, ...] = ()  # the files that exist, in OpenSSH's order
    known_hosts_source: str = _DEFAULT_SOURCE
    password: str | None = field(default=None, repr=False)
    passphrase: str | None = field(default=None, repr=False)
    jumps: tuple[Jump, ...] = ()  # reached in this order, each through the one before

    def scrub(self, text: str) -> str:
        """``text`` with this host's connection values (an SSH library's message may quote them)
        replaced by what they are, the longest first so that none is replaced in part."""
        values = [
            (self.password, "<password>"),
            (self.passphrase, "<passphrase>"),
            *((str(path), "<known_hosts file>") for path in self.known_hosts),
            *((str(path), "<private key file>") for path in self.key_files),
            (self.address, "<ansible_host>"),
            *((jump.address, "<jump host>") for jump in self.jumps),
        ]
        for value, name in sorted(((v, n) for v, n in values if v), key=lambda v: -len(v[0])):
            text = text.replace(value, name)
        users = [(self.user, "<ansible_user>"), *((j.user, "<jump user>") for j in self.jumps)]
        for user, name in ((u, n) for u, n in users if u):
            text = re.sub(rf"(?<![\w.-]){re.escape(user)}(?![\w.-])", name, text)
        return text


def _ssh_arguments(*texts: str) -> tuple[dict[str, str], list[str]]:
    """(the options ssh(1) arguments set, lower-cased, the first value winning as in ssh(1); every
    IdentityFile, which is cumulative)."""
    options: dict[str, str] = {}
    identities: list[str] = []
    for text in texts:
        words = iter(shlex.split(text))
        for word in words:
            if len(word) < 2 or word[0] != "-" or word[1] not in _FLAGS_WITH_VALUE:
                continue  # a flag without a value (-4, -q, -T...) or a stray word
            value = word[2:] or next(words, "")
            if word[1] == "o":
                key, _, value = value.replace("=", " ", 1).partition(" ")
            else:
                key = _FLAG_OPTIONS.get(word[1], "")
            if key.strip().lower() == "identityfile":
                identities.append(value.strip())
            elif key:
                options.setdefault(key.strip().lower(), value.strip())
    return options, identities


def _target(name: str, options: Mapping[str, Any]) -> SshTarget:
    """Host ``name``'s :class:`SshTarget` from its ssh plugin options (inventory.ssh_options)."""
    try:
        arguments, identities = _ssh_arguments(
            *(str(options[o] or "") for o in ("ssh_args", "ssh_common_args", "ssh_extra_args"))
        )
    except ValueError:
        raise BadInput(f"host '{name}': its ssh arguments have an unclosed quote") from None
    refused = [w for key, w in _REFUSED.items() if arguments.get(key, "none").lower() != "none"]
    if refused:
        raise BadInput(
            f"host '{name}': its ssh arguments use {', '.join(refused)}, which deploykit exec "
            "does not support (it speaks ProxyJump); use `ansible` for this host"
        )
    if options["private_key"]:
        raise BadInput(
            f"host '{name}': ansible_private_key (a key given inline) is not supported by "
            "deploykit exec; put the key in a file and set ansible_ssh_private_key_file"
        )
    key = options["private_key_file"]
    if key and not Path(str(key)).expanduser().is_file():
        raise BadInput(
            f"host '{name}': the file named by ansible_ssh_private_key_file does not exist; "
            "fix the path (for the lab: deploykit lab up)"
        )
    # An IdentityFile that does not exist is skipped by ssh(1) with a warning, and here silently.
    keys = [Path(str(f)).expanduser() for f in ([key] if key else []) + identities]
    known = [
        Path(file).expanduser()
        for option, default in _KNOWN_HOSTS.items()
        for file in arguments.get(option, default).split()
        if file.lower() != "none"
    ]
    proxy_jump = arguments.get("proxyjump", "none")
    jumps = [] if proxy_jump.lower() == "none" else proxy_jump.split(",")
    try:
        # Ansible puts its own -o Port/User (from the variables) first; ssh(1) keeps the first.
        port = int(options["port"] or arguments.get("port") or _PORT)
    except ValueError:
        raise BadInput(f"host '{name}': the Port in its ssh arguments is not a number") from None
    user = options["remote_user"] or arguments.get("user")
    return SshTarget(
        host=name,
        address=str(options["host"]),
        port=port,
        user=str(user) if user else None,
        key_files=tuple(dict.fromkeys(path for path in keys if path.is_file())),
        known_hosts=tuple(dict.fromkeys(path for path in known if path.is_file())),
        known_hosts_source="the UserKnownHostsFile set by ansible_ssh_common_args"
        if "userknownhostsfile" in arguments
        else _DEFAULT_SOURCE,
        password=str(options["password"]) if options["password"] else None,
        passphrase=str(options["private_key_passphrase"] or "") or None,
        jumps=tuple(_jump(name, hop) for hop in jumps),
    )


def _jump(name: str, hop: str) -> Jump:
    match = _JUMP.fullmatch(hop.strip())
    port = int(match["port"] or _PORT) if match else 0
    if match is None or not 0 < port < 2**16:
        raise BadInput(
            f"host '{name}': the ProxyJump (or -J) in its ssh arguments is not "
            "[user@]host[:port], several separated by commas"
        )
    return Jump(match["host"].strip("[]"), port, match["user"])


def read_targets(inventory_path: Path, hosts: Iterable[str]) -> dict[str, SshTarget]:
    """How each of ``hosts`` is reached; contacts nothing. Raises :class:`BadInput` naming the
    host and the variable, never its value, for settings exec cannot honour."""
    with inventory.opened(inventory_path) as opened:
        return {name: _target(name, inventory.ssh_options(opened, name)) for name in hosts}


def targets_for(
    inventory_path: Path, pattern: str, *, roles_dir: Path | None = None
) -> list[SshTarget]:
    """How to reach every host ``pattern`` names, in order. Raises :class:`BadInput`, before any
    host is contacted, when ``deploykit check`` rejects the inventory (against the argument specs
    in ``roles_dir``, default: the project's roles), the pattern names no group or host of it, or
    a host's connection settings cannot be honoured."""
    roles = roles_dir if roles_dir is not None else project_root() / "roles"
    problems = inventory.validate_inventory(inventory_path, roles_dir=roles)
    if problems:
        raise BadInput(
            f"{len(problems)} problem(s) in {inventory_path}: nothing was run\n"
            + "\n".join(str(problem) for problem in problems),
            hint=f"deploykit check -i {inventory_path}",
        )
    hosts = resolve_pattern(inventory.read_layout(inventory_path).groups, pattern)
    targets = read_targets(inventory_path, hosts)
    return [targets[host] for host in hosts]


class _UnknownHostKey(paramiko.SSHException):  # type: ignore[misc]  # paramiko ships no types
    """An unknown host key (paramiko's RejectPolicy would say so quoting the address)."""


class _RejectUnknownHosts(paramiko.RejectPolicy):  # type: ignore[misc]
    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        raise _UnknownHostKey(key.get_name())


class _Connection(Connection):  # type: ignore[misc]  # fabric ships no types
    """A Fabric connection whose run, connecting included, is bounded by its ``deadline``, if it
    has one (a ThreadingGroup has none). Equal only to itself: a ThreadingGroup keys its results
    by connection, and Fabric's equality would merge two hosts of one address, user and port."""

    deadline: _Deadline | None = None
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def run(self, command: str, **kwargs: Any) -> Any:
        if self.deadline is not None:
            self.deadline.start()
        try:
            return super().run(command, **kwargs)
        finally:
            if self.deadline is not None:
                self.deadline.cancel()


def _connection(target: SshTarget, timeout: float) -> Connection:
    """A connection to ``target`` through its jump hosts, each checking its server's host key
    against ``target.known_hosts``. Raises OSError when a known_hosts file cannot be read."""
    # Fabric's configuration (its files, /etc/fabric.yaml and ~/.fabric.yaml), save what follows.
    config = Config(
        overrides={
            # The inventory alone says where a host is: Fabric would apply some of ~/.ssh/config
            # (HostName, ProxyJump...) but not its known_hosts options, and ansible's ssh, which
            # reads it too, is handed the inventory's -o options ahead of it.
            "load_ssh_configs": False,
            "gateway": None,  # jump hosts come from the inventory only
            "forward_agent": False,  # root on every host gets no use of the operator's agent
            # Captured, not echoed: the report prints it, stdout and stderr apart. A non-zero
            # exit is a result. Parallel hosts must not share our stdin.
            "run": {"hide": True, "echo": False, "warn": True, "pty": False, "in_stream": False},
        }
    )
    # paramiko's own timeouts a second after the host's deadline, which says what timed out.
    inner = math.ceil(timeout) + 1
    login: dict[str, Any] = {"banner_timeout": inner, "auth_timeout": inner}
    if target.key_files:
        # The inventory names the key: offer only it, lest agent keys and ~/.ssh/id_* use up the
        # server's MaxAuthTries first. Without one, as ssh(1): the agent, then the defaults.
        login.update(look_for_keys=False, allow_agent=False)
        login["key_filename"] = [str(path) for path in target.key_files]
    if target.passphrase:
        login["passphrase"] = target.passphrase
    connection = None
    hops = [*target.jumps, Jump(target.address, target.port, target.user)]
    for number, hop in enumerate(hops, start=1):
        # The jump hosts are offered the host's keys, never its password.
        last = number == len(hops)
        password = {"password": target.password} if target.password and last else {}
        connection = _Connection(
            hop.address, user=hop.user, port=hop.port, config=config, gateway=connection,
            connect_timeout=inner, connect_kwargs=login | password,
        )  # fmt: skip
        # Fabric adds unknown host keys by default; here they are checked, never added.
        connection.client.set_missing_host_key_policy(_RejectUnknownHosts())
        _trust(connection.client.get_host_keys(), target.known_hosts)
    return connection


def _trust(keys: paramiko.HostKeys, files: Iterable[Path]) -> None:
    """Add the host keys of ``files`` to ``keys``, as ssh(1) reads them: a malformed line is
    skipped (paramiko would stop reading the file) and the first key per name and type wins.
    Marker lines (@cert-authority, @revoked) trust nothing here."""
    for path in files:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            try:
                found = paramiko.hostkeys.HostKeyEntry.from_line(line.strip(), number)
            except (paramiko.SSHException, paramiko.hostkeys.InvalidHostKey):
                continue
            marker = line.strip().startswith(("#", "@"))
            for name in found.hostnames if found and found.key and not marker else ():
                if found.key.get_name() not in (keys.lookup(name) or {}):
                    keys.add(name, found.key.get_name(), found.key)


def _hops(connection: Connection) -> list[Connection]:
    """The connections to the jump hosts, then to the host: in the order they are opened."""
    return [*_hops(connection.gateway), connection] if connection.gateway else [connection]


def _close(connection: Connection) -> None:
    for hop in _hops(connection):  # the clients: Fabric leaves a half-open one as it is
        hop.client.close()


class _Deadline(threading.Timer):
    """A host's time budget: once out, its connections are closed from the timer's thread, which
    ends a connect, an authentication or a command wherever it is blocked."""

    def __init__(self, seconds: float, connection: Connection) -> None:
        super().__init__(seconds, self._expire, args=(connection,))
        self.daemon, self.expired = True, False

    def _expire(self, connection: Connection) -> None:
        self.expired = True
        _close(connection)


def run_on_targets(
    targets: Sequence[SshTarget],
    command: str,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    workers: int = DEFAULT_WORKERS,
) -> ExecResult:
    """Run ``command`` on every target, ``workers`` at a time, each within ``timeout`` seconds
    (connection included). Results come in the order of ``targets``."""
    if not (timeout > 0 and math.isfinite(timeout)) or workers < 1:
        raise BadInput(f"the timeout must be a positive number of seconds, not {timeout:g}")
    # A ThreadingGroup runs all its hosts at once, with no deadline: the hosts go in groups of
    # `workers`, each host with a deadline of its own, so that a group lasts `timeout` at most.
    # (A slow host keeps its slot to the end of its group, where a pool would hand it on: the
    # same for a fleet of up to `workers` hosts.)
    results: list[HostResult] = []
    for start in range(0, len(targets), workers):
        results += _run_group(targets[start : start + workers], command, timeout)
    return ExecResult(tuple(results))


def run_with_input(target: SshTarget, command: str, data: str, *, timeout: float) -> HostResult:
    """``command`` on one host with ``data`` on its standard input (then end of file), within
    ``timeout`` seconds, connection included, as exec runs a command. (On paramiko's channel:
    Invoke hands a stream that is not a terminal to the command one byte per 10 ms.)"""
    try:
        connection = _connection(target, timeout)
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else type(error).__name__
        return HostResult(target.host, None, error=f"cannot read its known_hosts files: {reason}")
    deadline = _Deadline(timeout, connection)
    deadline.start()
    outcome: Any
    try:
        connection.open()
        channel = connection.client.get_transport().open_session()
        channel.exec_command(command)
        channel.sendall(data.encode())
        channel.shutdown_write()
        stdout = channel.makefile("rb").read().decode(errors="replace")
        stderr = channel.makefile_stderr("rb").read().decode(errors="replace")
        outcome = SimpleNamespace(exited=channel.recv_exit_status(), stdout=stdout, stderr=stderr)
    except Exception as error:  # a host not reached is a result, as in exec
        outcome = error
    finally:
        deadline.cancel()
        _close(connection)
    return _result(target, connection, outcome, deadline.expired, timeout)


def _run_group(targets: Sequence[SshTarget], command: str, timeout: float) -> list[HostResult]:
    group, unread = ThreadingGroup(), dict[str, str]()
    for target in targets:
        try:
            group.append(_connection(target, timeout))
        except OSError as error:
            reason = os.strerror(error.errno) if error.errno else type(error).__name__
            unread[target.host] = f"cannot read its known_hosts files: {reason}"
    readable = [target for target in targets if target.host not in unread]
    for connection in group:
        connection.deadline = _Deadline(timeout, connection)
    try:
        outcomes = group.run(command)
    except GroupException as failed:
        outcomes = failed.result
    finally:
        for connection in group:
            connection.deadline.cancel()
            _close(connection)
    found = {
        target.host: _result(target, c, outcomes[c], c.deadline.expired, timeout)
        for target, c in zip(readable, group, strict=True)
    }
    return [found.get(t.host) or HostResult(t.host, None, error=unread[t.host]) for t in targets]


def _result(
    target: SshTarget, connection: Connection, outcome: Any, expired: bool, timeout: float
) -> HostResult:
    """A host's result from what Fabric returned or raised."""
    if not isinstance(outcome, BaseException) and outcome.exited >= 0:
        return HostResult(target.host, int(outcome.exited), outcome.stdout, outcome.stderr)
    if expired and connection.transport is None:
        message = f"timed out after {timeout:g} s while connecting (host down or port filtered?)"
    elif expired:
        message = f"timed out after {timeout:g} s: the command did not finish (it may still run)"
    elif isinstance(outcome, BaseException):
        message = target.scrub(_describe(outcome, target, connection))
    else:  # paramiko's -1: sshd reported a signal, not an exit code
        message = "the command ended without an exit code (killed by a signal?)"
    if isinstance(outcome, BaseException):
        return HostResult(target.host, None, error=printable(message))
    return HostResult(target.host, None, outcome.stdout, outcome.stderr, printable(message))


def _describe(error: BaseException, target: SshTarget, connection: Connection) -> str:
    """One line for a failure to reach a host or run the command, with what to check."""
    hops = _hops(connection)
    failed = next((hop for hop in hops if hop.transport is None), connection)
    jump = f"its jump host {hops.index(failed) + 1}: " if failed is not connection else ""
    if isinstance(error, _UnknownHostKey):
        message = (
            f"refused: its {error} host key is not in {target.known_hosts_source}"
            f"{'' if target.known_hosts else ' (none of those files exists)'}; never trusted on "
            "first use: check the key, then add it to known_hosts"
        )
    elif isinstance(error, paramiko.BadHostKeyException):
        message = (
            "refused: its host key does NOT match its known_hosts entry (the host was rebuilt, "
            "or someone is in the middle); verify the new key before replacing the entry"
        )
    elif isinstance(error, paramiko.AuthenticationException):
        message = (
            f"authentication failed: check {'its ProxyJump user' if jump else 'ansible_user'} and "
            "that the key in ansible_ssh_private_key_file is authorised there"
        )
    elif isinstance(error, paramiko.ChannelException):
        message = f"its jump host cannot reach its SSH port: {error.text}"
    elif isinstance(error, socket.gaierror):
        message = "its address does not resolve: check ansible_host"
    elif isinstance(error, paramiko.ssh_exception.NoValidConnectionsError):
        reasons = {os.strerror(e.errno) for e in error.errors.values() if e.errno}
        message = f"cannot connect to its SSH port: {', '.join(sorted(reasons)) or 'refused'}"
    elif isinstance(error, OSError) and error.errno:
        message = f"cannot connect: {os.strerror(error.errno)}"
    elif isinstance(error, EOFError | paramiko.SSHException):
        message = f"SSH failed: {str(error).strip() or 'the connection was closed'}"
    else:
        message = f"{type(error).__name__}: {str(error).strip()}"
    return jump + message


class LineStream:
    """``command`` on one host, each line of its output handed to ``on_line(host, line)`` as it
    comes, until the command ends or :meth:`close` is called (from another thread).

    It runs on a pseudo-terminal, so that the host's sshd hangs it up when the connection closes:
    nothing it started (``journalctl -f``) outlives the stream. Its stdout and stderr arrive
    together, as on a terminal. Connecting has ``timeout`` seconds, the command no limit.
    """

    def __init__(
        self,
        target: SshTarget,
        command: str,
        *,
        timeout: float,
        on_line: Callable[[str, str], None],
    ) -> None:
        self.target, self._command, self._timeout, self._on_line = target, command, timeout, on_line
        self._connection = _connection(target, timeout)
        self._pending = ""
        self._closed = threading.Event()

    def write(self, text: str) -> None:  # the stream Fabric writes the output to
        lines = (self._pending + text).split("\n")
        self._pending = lines.pop()
        for line in lines:
            self._on_line(self.target.host, line.rstrip("\r"))

    def flush(self) -> None:
        return None

    def run(self) -> HostResult:
        """Connect (within the timeout), then run until the command ends or the stream closes."""
        deadline = _Deadline(self._timeout, self._connection)
        try:
            deadline.start()
            self._connection.open()
            deadline.cancel()
            outcome = self._connection.run(self._command, pty=True, out_stream=self)
        except Exception as error:  # one host's failure never stops the others
            outcome = error
        finally:
            deadline.cancel()
            if self._pending:
                self.write("\n")
            _close(self._connection)
        if self._closed.is_set():
            return HostResult(self.target.host, None, error="closed")
        result = _result(self.target, self._connection, outcome, deadline.expired, self._timeout)
        return HostResult(self.target.host, result.rc, error=result.error)

    def close(self) -> None:
        self._closed.set()
        _close(self._connection)


def printable(line: str) -> str:
    return _CONTROL_CHARACTERS.sub(lambda m: f"\\x{ord(m[0]):02x}", line)
