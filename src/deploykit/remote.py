"""``deploykit exec PATTERN -- CMD``: ad-hoc commands over SSH (Fabric), in parallel.

:func:`run_on_group` validates the inventory, resolves PATTERN (a group, a host, ``all``, or
comma-separated names) to hosts, and runs CMD on each of them as the connecting user, a bounded
number at a time, each within its own deadline. It returns one :class:`HostResult` per host: the
exit code, stdout and stderr, or why the host could not be reached.

How each host is reached is decided the way Ansible decides it, from the same variables: the host's
effective variables come from Ansible's ``VariableManager`` (inventory, ``group_vars/``,
``host_vars/``), connection variables that are templates are rendered by Ansible's ``Templar``,
and Ansible's own ``ssh`` connection plugin resolves them into options (``ansible_host`` or
``ansible_ssh_host``, ``ansible_user``, ``ansible_port``, ``ansible_ssh_private_key_file``, the
password, ``ansible_ssh_common_args``/``ansible_ssh_extra_args`` and ansible.cfg's ``ssh_args``),
with Ansible's precedence among the aliases. From the ssh arguments, the options that decide
*which server is trusted* are honoured: ``UserKnownHostsFile`` and ``GlobalKnownHostsFile`` (with
OpenSSH's defaults when unset), plus ``Port``, ``User`` and ``IdentityFile`` where no variable sets
them (Ansible passes its own ``-o Port/User/IdentityFile`` first, and OpenSSH keeps the first).

Three deliberate differences from ``ansible``:

- host keys are ALWAYS checked against those known_hosts files and an unknown host is refused
  (paramiko's ``RejectPolicy``), whatever ``StrictHostKeyChecking`` or ``host_key_checking`` say:
  an ad-hoc command runs as root on the whole fleet, so trust is never given on first use;
- a host reached through a jump host or a proxy command, or whose key is looked up under an alias,
  is refused as bad input rather than contacted directly (exec does not speak those yet);
- ``~/.ssh/config`` is not read: the inventory alone says where a host is.

Nothing from the inventory's variables is printed: messages name the variable, never its value,
and errors raised by the SSH layer are scrubbed of addresses, user names, paths and passwords.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shlex
import socket
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import paramiko
from ansible import constants as ansible_constants
from ansible.errors import AnsibleError
from ansible.inventory.manager import InventoryManager
from ansible.playbook.play_context import PlayContext
from ansible.plugins.loader import connection_loader
from ansible.template import Templar
from fabric import Config, Connection
from rich.console import Console
from rich.text import Text

from deploykit import inventory, lab
from deploykit.argtypes import line_count, positive_seconds
from deploykit.errors import EXIT_FAILED, EXIT_OK, BadInput, DeploykitError
from deploykit.project import project_root

__all__ = [
    "DEFAULT_LINES",
    "DEFAULT_TIMEOUT",
    "DEFAULT_WORKERS",
    "ExecResult",
    "HostResult",
    "LineStream",
    "SshTarget",
    "add_exec_command",
    "command_line",
    "format_report",
    "printable",
    "read_targets",
    "resolve_pattern",
    "run_on_group",
    "run_on_targets",
    "targets_for",
]

#: Hosts contacted at once: ansible.cfg's ``forks``, so exec and a playbook load the fleet alike.
DEFAULT_WORKERS: Final = 25
#: Seconds one host may take, connection included, before it is reported as timed out.
DEFAULT_TIMEOUT: Final = 60.0
#: Lines of stdout and of stderr shown per host for people: every line (None) unless --lines N
#: asks for the last N (``--json`` always carries everything).
DEFAULT_LINES: Final = None

_SSH_PORT: Final = 22

# OpenSSH's defaults when the ssh arguments name no known_hosts file.
_DEFAULT_USER_KNOWN_HOSTS: Final = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
_DEFAULT_GLOBAL_KNOWN_HOSTS: Final = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")

# ssh(1) flags that take a value: their value is skipped, never mistaken for a flag of its own.
_SSH_FLAGS_WITH_VALUE: Final = frozenset("BbcDEeFIiJLlmOoPpQRSWw")

# ssh options that send the connection somewhere other than ansible_host, or look its key up
# under another name. Connecting directly instead would reach a different path to the host.
_UNSUPPORTED_SSH_OPTIONS: Final = {
    "proxyjump": "ProxyJump (a jump host)",
    "proxycommand": "ProxyCommand",
    "hostkeyalias": "HostKeyAlias",
}

# ssh option -> the ssh plugin's option. Ansible passes its own -o Port/User ahead of
# ansible_ssh_common_args; where a variable sets them, OpenSSH ignores the arguments' (first wins).
_PLUGIN_OPTION_OF: Final = {"port": "port", "user": "remote_user"}

# Remote output reaches the operator's terminal: control characters (escape sequences above all)
# are shown escaped so that a host cannot move the cursor, retitle the window or hide lines.
_CONTROL_CHARACTERS: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

# exec's own options: found first among the command words, they were misplaced after PATTERN.
_EXEC_OPTIONS: Final = frozenset(
    {"-h", "--help", "-i", "--inventory", "--json", "--timeout", "--lines"}
)


# --- results ----------------------------------------------------------------------------------


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
        """The ``--json`` document: ``{"hosts": {host: {rc, stdout, stderr, error}}, "failed":
        [hosts]}``."""
        return {
            "hosts": {result.host: result.to_dict() for result in self.hosts},
            "failed": self.failed,
        }


# --- input: the pattern and the command ---------------------------------------------------------


def resolve_pattern(groups: Mapping[str, Sequence[str]], pattern: str) -> list[str]:
    """The hosts ``pattern`` names, each once, in order: comma-separated group names, host names
    and ``all``, resolved against ``groups`` (each group's hosts, as :func:`read_layout` gives
    them). Raises :class:`BadInput` naming the known groups when a name is neither."""
    all_hosts = list(dict.fromkeys(host for hosts in groups.values() for host in hosts))
    names = [name.strip() for name in pattern.split(",")]
    if not pattern.strip() or not all(names):
        raise BadInput(
            f"the host pattern {pattern!r} has an empty name; give a group, a host or 'all', "
            "several separated by commas (e.g. app,worker)"
        )
    unknown = [name for name in names if name != "all" and name not in groups]
    unknown = [name for name in unknown if name not in all_hosts]
    if unknown:
        known_groups = ", ".join(sorted(groups)) or "none"
        quoted = ", ".join(f"'{name}'" for name in unknown)
        suggestion = inventory.did_you_mean(unknown[0], [*sorted(groups), *all_hosts, "all"])
        raise BadInput(
            f"no group or host named {quoted} in the inventory{suggestion}; known groups: "
            f"{known_groups} (or a host name, or all)"
        )
    selected: dict[str, None] = {}
    for name in names:
        for host in all_hosts if name == "all" else groups.get(name, [name]):
            selected.setdefault(host)
    if not selected:
        raise BadInput(f"the host pattern {pattern!r} matches no host; add hosts to its groups")
    return list(selected)


def command_line(words: Sequence[str]) -> str:
    """The remote command from the words after PATTERN: joined by spaces, as ssh(1) does, for the
    remote user's shell to interpret (quote the whole command to keep the local shell off it)."""
    words = list(words)
    if words and words[0] == "--":  # some Pythons' argparse keep the separator
        words = words[1:]
    elif words and words[0] in _EXEC_OPTIONS:
        # `exec app --json -- hostname`: the option was meant for exec, not for the host.
        raise BadInput(
            f"{words[0]} after PATTERN would be sent to the hosts as the command; put exec's "
            "options before PATTERN: deploykit exec [OPTIONS] PATTERN -- CMD"
        )
    return _checked_command(" ".join(words))


def _checked_command(command: str) -> str:
    if not command.strip():
        raise BadInput(
            "no command given; put it after the pattern, e.g. deploykit exec app -- hostname"
        )
    return command


def _check_limits(timeout: float, workers: int) -> None:
    if not (timeout > 0 and math.isfinite(timeout)):
        raise BadInput(f"the timeout must be a positive number of seconds, not {timeout:g}")
    if workers < 1:
        raise BadInput(f"the number of workers must be at least 1, not {workers}")


# --- where each host is and how it is trusted ---------------------------------------------------


@dataclass(frozen=True)
class SshTarget:
    """How one host is reached. Secrets never appear in its repr."""

    host: str  # the inventory name
    address: str
    port: int = _SSH_PORT
    user: str | None = None  # None: the local user name, as ssh(1)
    key_files: tuple[Path, ...] = ()  # empty: the SSH agent and ~/.ssh/id_*, as ssh(1)
    known_hosts: tuple[Path, ...] = ()  # the files that exist, in OpenSSH's order
    known_hosts_source: str = "the default known_hosts files (~/.ssh/known_hosts)"
    password: str | None = field(default=None, repr=False)
    passphrase: str | None = field(default=None, repr=False)

    def scrub(self, text: str) -> str:
        """``text`` with this host's connection values replaced by the names of their variables:
        an SSH library's message may quote them, and inventory values are never printed."""
        replacements = [
            (self.password, "<password>"),
            (self.passphrase, "<passphrase>"),
            *((str(path), "<known_hosts file>") for path in self.known_hosts),
            *((str(path), "<private key file>") for path in self.key_files),
            (self.address, "<ansible_host>"),
        ]
        for value, name in replacements:
            if value:
                text = text.replace(value, name)
        if self.user:
            text = re.sub(rf"(?<![\w.-]){re.escape(self.user)}(?![\w.-])", "<ansible_user>", text)
        return text


@dataclass(frozen=True)
class _SshArguments:
    """What an ssh(1) argument string says about trust and addressing (first value wins)."""

    options: Mapping[str, str]  # lower-cased option name -> value
    identity_files: tuple[str, ...]
    unsupported: tuple[str, ...]


def _parse_ssh_arguments(*texts: str) -> _SshArguments:
    options: dict[str, str] = {}
    identity_files: list[str] = []
    unsupported: list[str] = []

    def option(text: str) -> None:
        key, _, value = text.replace("=", " ", 1).partition(" ")
        key, value = key.strip().lower(), value.strip()
        if key == "identityfile":  # cumulative in OpenSSH: every one is tried
            identity_files.append(value)
        elif key in _UNSUPPORTED_SSH_OPTIONS and value.lower() != "none":
            unsupported.append(_UNSUPPORTED_SSH_OPTIONS[key])
        options.setdefault(key, value)

    for text in texts:
        words = iter(shlex.split(text or ""))
        for word in words:
            if len(word) < 2 or word[0] != "-" or word[1] not in _SSH_FLAGS_WITH_VALUE:
                continue  # a flag without a value (-4, -q, -T...) or a stray word
            value = word[2:] or next(words, "")
            if word[1] == "o":
                option(value)
            elif word[1] == "i":
                identity_files.append(value)
            elif word[1] == "p":
                options.setdefault("port", value)
            elif word[1] == "l":
                options.setdefault("user", value)
            elif word[1] == "J":
                unsupported.append(_UNSUPPORTED_SSH_OPTIONS["proxyjump"])
    return _SshArguments(options, tuple(identity_files), tuple(dict.fromkeys(unsupported)))


def _known_hosts_files(arguments: _SshArguments) -> tuple[tuple[Path, ...], str]:
    """(the known_hosts files that exist, in OpenSSH's order; where the list came from)."""
    user = arguments.options.get("userknownhostsfile")
    global_ = arguments.options.get("globalknownhostsfile")
    names = [
        *(_DEFAULT_USER_KNOWN_HOSTS if user is None else user.split()),
        *(_DEFAULT_GLOBAL_KNOWN_HOSTS if global_ is None else global_.split()),
    ]
    files = [Path(name).expanduser() for name in names if name.lower() != "none"]
    found = tuple(dict.fromkeys(path for path in files if path.is_file()))
    source = (
        "the UserKnownHostsFile set by ansible_ssh_common_args"
        if user is not None
        else "the default known_hosts files (~/.ssh/known_hosts)"
    )
    return found, source


def read_targets(inventory_path: Path, hosts: Iterable[str]) -> dict[str, SshTarget]:
    """How each of ``hosts`` is reached, from its effective variables, resolved as Ansible's ssh
    connection plugin resolves them (see the module's docstring). Contacts nothing.

    Raises :class:`BadInput` naming the host and the variable (never its value) when a host is
    not reached over SSH, a connection variable cannot be rendered (a template that needs the
    vault: exec does not decrypt), a key file is missing, or a jump host or proxy is configured.
    """
    # Read as `deploykit check` reads it: vault-encrypted vars files are skipped, not fatal.
    with inventory.opened(inventory_path) as opened:
        return {
            name: _target(name, opened.manager, opened.variables, opened.loader)
            for name in dict.fromkeys(hosts)
        }


def _target(name: str, manager: InventoryManager, variables: Any, loader: Any) -> SshTarget:
    host = manager.get_host(name)
    if host is None:
        raise BadInput(f"host '{name}' is not in the inventory")
    try:
        effective: Mapping[str, Any] = variables.get_vars(host=host, include_hostvars=False)
    except AnsibleError as error:
        raise BadInput(
            f"host '{name}': Ansible cannot work out its variables ({type(error).__name__}); "
            "run deploykit check"
        ) from None
    templar = Templar(loader=loader, variables=effective)

    def rendered(variable: str) -> Any:
        try:
            return templar.template(effective[variable])
        except AnsibleError as error:
            raise BadInput(
                f"host '{name}': {variable} is a template that cannot be rendered here "
                f"({type(error).__name__}); exec reads no vault, so set it to a plain value"
            ) from None

    connection = (
        str(rendered("ansible_connection"))
        if "ansible_connection" in effective
        else str(ansible_constants.DEFAULT_TRANSPORT)
    )
    if connection not in inventory.SSH_CONNECTIONS:
        raise BadInput(
            f"host '{name}' is not reached over SSH (its ansible_connection is not ssh); "
            "deploykit exec speaks SSH only: use `ansible` for this host"
        )

    # Ansible's own ssh plugin decides which variable wins (ansible_ssh_host over ansible_host,
    # ansible.cfg and ANSIBLE_* defaults, types): the same options `ansible` would connect with.
    # The short name: a FQCN needs the collection loader, which only Ansible's own CLIs install.
    plugin = connection_loader.get("ssh", PlayContext())
    if plugin is None:
        raise DeploykitError(
            "Ansible's ssh connection plugin cannot be loaded: reinstall deploykit"
        )
    option_variables = ansible_constants.config.get_plugin_vars("connection", "ssh")
    try:
        plugin.set_options(var_options={v: rendered(v) for v in option_variables if v in effective})
    except AnsibleError as error:
        raise BadInput(
            f"host '{name}': Ansible rejects its connection variables ({type(error).__name__}); "
            "run deploykit check"
        ) from None
    arguments = _parse_ssh_arguments(
        *(
            str(plugin.get_option(o) or "")
            for o in ("ssh_args", "ssh_common_args", "ssh_extra_args")
        )
    )
    if arguments.unsupported:
        raise BadInput(
            f"host '{name}': its ssh arguments use {', '.join(arguments.unsupported)}, which "
            "deploykit exec does not support; use `ansible` for this host"
        )
    if plugin.get_option("private_key"):
        raise BadInput(
            f"host '{name}': ansible_private_key (a key given inline) is not supported by "
            "deploykit exec; put the key in a file and set ansible_ssh_private_key_file"
        )

    settings = {o: plugin.get_option(o) for o in ("port", "remote_user")}
    for option, variable in _PLUGIN_OPTION_OF.items():
        if settings[variable] is None and option in arguments.options:
            settings[variable] = arguments.options[option]
    try:
        port = int(settings["port"] or _SSH_PORT)
    except ValueError:
        raise BadInput(f"host '{name}': the Port in its ssh arguments is not a number") from None

    key_files: list[Path] = []
    key_variable = plugin.get_option("private_key_file")
    if key_variable:
        key = Path(str(key_variable)).expanduser()
        if not key.is_file():
            raise BadInput(
                f"host '{name}': the file named by ansible_ssh_private_key_file does not exist; "
                "fix the path (for the lab: deploykit lab up)"
            )
        key_files.append(key)
    # An IdentityFile that does not exist is skipped by ssh(1) with a warning, and here silently.
    key_files += [
        p for p in (Path(f).expanduser() for f in arguments.identity_files) if p.is_file()
    ]

    known_hosts, source = _known_hosts_files(arguments)
    password, passphrase = (
        plugin.get_option("password"),
        plugin.get_option("private_key_passphrase"),
    )
    user = settings["remote_user"]
    return SshTarget(
        host=name,
        address=str(plugin.get_option("host")),
        port=port,
        user=str(user) if user else None,
        key_files=tuple(dict.fromkeys(key_files)),
        known_hosts=known_hosts,
        known_hosts_source=source,
        password=str(password) if password else None,
        passphrase=str(passphrase) if passphrase else None,
    )


# --- running ------------------------------------------------------------------------------------


class _UnknownHostKey(paramiko.SSHException):  # type: ignore[misc]  # paramiko ships no types
    """The host presented a key that no known_hosts entry holds for its address."""


class _RejectUnknownHosts(paramiko.RejectPolicy):  # type: ignore[misc]
    """paramiko's RejectPolicy, raising an exception of its own so that the refusal is reported as
    such (RejectPolicy's message quotes the address, which must not be printed)."""

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        del client, hostname
        raise _UnknownHostKey(key.get_name())


class _Deadline:
    """One host's time budget. When it runs out the connection is closed from this timer's
    thread, which ends a connect, an authentication or a command wherever it is blocked."""

    def __init__(self, seconds: float, connection: Connection) -> None:
        self.seconds = seconds
        self.expired = threading.Event()
        self._timer = threading.Timer(seconds, self._expire, args=(connection,))
        self._timer.daemon = True

    def _expire(self, connection: Connection) -> None:
        self.expired.set()
        connection.client.close()

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


def _connection(target: SshTarget, timeout: float) -> Connection:
    config = Config(
        # lazy: no /etc/fabric.yaml or ~/.fabric.yaml; an empty SSHConfig: no ~/.ssh/config.
        lazy=True,
        ssh_config=paramiko.SSHConfig(),
        overrides={
            "run": {
                "hide": True,  # captured, never echoed: the report prints it, per host
                "warn": True,  # a non-zero exit is a result, not an exception
                "in_stream": False,  # parallel hosts must not share (or wait on) our stdin
                "pty": False,
                "encoding": "utf-8",  # what Debian hosts write; undecodable bytes are replaced
            },
        },
    )
    # paramiko's own timeouts are a second later than the host's deadline (_Deadline), so that a
    # host out of time is always reported as such, whichever step it was stuck in.
    inner = timeout + 1.0
    connect_kwargs: dict[str, Any] = {
        "timeout": inner,
        "banner_timeout": inner,
        "auth_timeout": inner,
        "channel_timeout": inner,
    }
    if target.key_files:
        # The inventory names the key: offer only it, so that agent keys and ~/.ssh/id_* do not
        # use up the server's MaxAuthTries first. Without one, do as ssh(1): agent, then defaults.
        connect_kwargs.update(
            key_filename=[str(path) for path in target.key_files],
            look_for_keys=False,
            allow_agent=False,
        )
    if target.password:
        connect_kwargs["password"] = target.password
    if target.passphrase:
        connect_kwargs["passphrase"] = target.passphrase
    connection = Connection(
        host=target.address,
        user=target.user,
        port=target.port,
        config=config,
        connect_kwargs=connect_kwargs,
        forward_agent=False,
    )
    # Fabric auto-adds unknown host keys by default; here they are checked, never added.
    connection.client.set_missing_host_key_policy(_RejectUnknownHosts())
    _trust(connection.client.get_host_keys(), target.known_hosts)
    return connection


def _trust(keys: Any, files: Iterable[Path]) -> None:
    """Add the host keys of ``files`` to paramiko's ``keys``, skipping the lines ssh(1) skips.

    paramiko's own loader stops at the first malformed key (and its error quotes the line), where
    OpenSSH ignores that line. Per host name and key type the first entry is kept, as files are
    read in OpenSSH's order. Marker lines (@cert-authority, @revoked) trust nothing here.
    """
    seen: set[tuple[str, str]] = set()
    for path in files:
        for number, raw in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith(("#", "@")):
                continue
            try:
                entry = paramiko.hostkeys.HostKeyEntry.from_line(line, number)
            except (paramiko.SSHException, paramiko.hostkeys.InvalidHostKey):
                continue
            if entry is None or entry.key is None:
                continue
            for name in entry.hostnames:
                if (name, entry.key.get_name()) not in seen:
                    seen.add((name, entry.key.get_name()))
                    keys.add(name, entry.key.get_name(), entry.key)


def _run_one(target: SshTarget, command: str, timeout: float) -> HostResult:
    """Run ``command`` on one host within ``timeout`` seconds; every failure becomes a result."""
    phase = "connecting"
    try:
        connection = _connection(target, timeout)
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else type(error).__name__
        return HostResult(target.host, None, error=f"cannot read its known_hosts files: {reason}")
    try:
        with _Deadline(timeout, connection) as deadline:
            try:
                connection.open()
                phase = "running"
                result = connection.run(command)
            except Exception as error:  # one host's failure never stops the others
                message = (
                    _timed_out(timeout, phase)
                    if deadline.expired.is_set()
                    else target.scrub(_describe(error, target))
                )
                return HostResult(target.host, None, error=printable(message))
    finally:
        connection.close()
    rc = int(result.exited)
    if rc >= 0:
        return HostResult(target.host, rc, result.stdout, result.stderr)
    # paramiko's -1: no exit-status came, because the deadline closed the channel or because sshd
    # reported a signal instead of a code.
    message = (
        _timed_out(timeout, phase)
        if deadline.expired.is_set()
        else "the command ended without an exit code (killed by a signal?)"
    )
    return HostResult(target.host, None, result.stdout, result.stderr, message)


class LineStream:
    """``command`` on one host, each line of its output handed to ``on_line(host, line)`` as it
    comes, until the command ends or :meth:`close` is called (from another thread).

    The command runs on a pseudo-terminal: when the connection closes, the host's sshd hangs it
    up and the command gets SIGHUP, so that nothing it started (``journalctl -f``) outlives the
    stream. Its stdout and stderr arrive together, as on a terminal. Connecting has ``timeout``
    seconds; the command itself none.
    """

    def __init__(
        self,
        target: SshTarget,
        command: str,
        *,
        timeout: float,
        on_line: Callable[[str, str], None],
    ) -> None:
        self.target = target
        self._command = command
        self._timeout = timeout
        self._on_line = on_line
        self._connection = _connection(target, timeout)
        self._pending = ""
        self._closed = threading.Event()

    # The stream Fabric writes the command's output to.
    def write(self, text: str) -> None:
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
            with deadline:
                self._connection.open()
            result = self._connection.run(self._command, pty=True, out_stream=self)
        except Exception as error:  # one host's failure never stops the others
            if self._closed.is_set():
                return HostResult(self.target.host, None, error="closed")
            message = (
                _timed_out(self._timeout, "connecting")
                if deadline.expired.is_set()
                else self.target.scrub(_describe(error, self.target))
            )
            return HostResult(self.target.host, None, error=printable(message))
        finally:
            if self._pending:
                self.write("\n")
            self._connection.close()
        if self._closed.is_set():
            return HostResult(self.target.host, None, error="closed")
        return HostResult(self.target.host, int(result.exited))

    def close(self) -> None:
        self._closed.set()
        self._connection.close()


def _timed_out(timeout: float, phase: str) -> str:
    if phase == "connecting":
        return f"timed out after {timeout:g} s while connecting (host down or port filtered?)"
    return f"timed out after {timeout:g} s: the command did not finish (it may still run there)"


def _describe(error: BaseException, target: SshTarget) -> str:
    """One line for a failure to reach a host or run the command, with what to check."""
    if isinstance(error, _UnknownHostKey):
        detail = "" if target.known_hosts else " (none of those files exists)"
        message = (
            f"refused: its {error} host key is not in {target.known_hosts_source}{detail}; "
            "never trusted on first use: check the key, then add it to known_hosts"
        )
    elif isinstance(error, paramiko.BadHostKeyException):
        message = (
            "refused: its host key does NOT match its known_hosts entry (the host was rebuilt, "
            "or someone is in the middle); verify the new key before replacing the entry"
        )
    elif isinstance(error, paramiko.AuthenticationException):
        message = (
            "authentication failed: check ansible_user and that the key in "
            "ansible_ssh_private_key_file is authorised on the host"
        )
    elif isinstance(error, socket.gaierror):
        message = "its address does not resolve: check ansible_host"
    elif isinstance(error, paramiko.ssh_exception.NoValidConnectionsError):
        reasons = {os.strerror(e.errno) for e in error.errors.values() if e.errno}
        message = f"cannot connect to its SSH port: {', '.join(sorted(reasons)) or 'refused'}"
    elif isinstance(error, TimeoutError):
        message = "no answer from its SSH port: check ansible_host, ansible_port and the firewall"
    elif isinstance(error, OSError) and error.errno:
        message = f"cannot connect: {os.strerror(error.errno)}"
    elif isinstance(error, EOFError | paramiko.SSHException):
        message = f"SSH failed: {str(error).strip() or 'the connection was closed'}"
    else:
        message = f"{type(error).__name__}: {str(error).strip()}"
    return message


def run_on_targets(
    targets: Sequence[SshTarget],
    command: str,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    workers: int = DEFAULT_WORKERS,
) -> ExecResult:
    """Run ``command`` on every target, at most ``workers`` at a time, each within ``timeout``
    seconds (connection included). Results come back in the order of ``targets``."""
    _check_limits(timeout, workers)
    if not targets:
        return ExecResult(())
    with ThreadPoolExecutor(
        max_workers=min(workers, len(targets)), thread_name_prefix="deploykit-exec"
    ) as pool:
        futures = [pool.submit(_run_one, target, command, timeout) for target in targets]
        try:
            return ExecResult(tuple(future.result() for future in futures))
        except BaseException:
            # Ctrl-C: hosts not yet started are not started; running ones end by their deadline.
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def run_on_group(
    inventory_path: Path,
    pattern: str,
    command: str,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    workers: int = DEFAULT_WORKERS,
    roles_dir: Path | None = None,
) -> ExecResult:
    """Run ``command`` on every host ``pattern`` names in the inventory at ``inventory_path``.

    Bad input raises :class:`BadInput` before any host is contacted: an inventory that
    ``deploykit check`` rejects (checked against the roles' argument specs in ``roles_dir``,
    default: the project's ``roles/``), an unknown group or host, an empty command, connection
    settings exec cannot honour.
    """
    _checked_command(command)
    _check_limits(timeout, workers)
    return run_on_targets(
        targets_for(inventory_path, pattern, roles_dir=roles_dir),
        command,
        timeout=timeout,
        workers=workers,
    )


def targets_for(
    inventory_path: Path, pattern: str, *, roles_dir: Path | None = None
) -> list[SshTarget]:
    """How to reach every host ``pattern`` names, in order. Raises :class:`BadInput` before any
    host is contacted when ``deploykit check`` rejects the inventory (checked against the roles'
    argument specs in ``roles_dir``, default: the project's ``roles/``) or the pattern names no
    group or host of it, or a host's connection settings cannot be honoured."""
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


# --- output -------------------------------------------------------------------------------------


def printable(line: str) -> str:
    return _CONTROL_CHARACTERS.sub(lambda m: f"\\x{ord(m[0]):02x}", line)


def _tail(text: str, lines: int | None) -> tuple[list[str], int]:
    """(the last ``lines`` lines of ``text``, every one when None; how many earlier lines were
    left out)."""
    all_lines = text.splitlines()
    if lines is None:
        return all_lines, 0
    kept = all_lines[len(all_lines) - lines :] if lines else []
    return kept, len(all_lines) - len(kept)


def format_report(result: ExecResult, *, lines: int | None = DEFAULT_LINES) -> Text:
    """For people: one block per host (its name, exit code or error, then its stdout and stderr,
    indented: every line, or the last ``lines``), and a summary line."""
    report = Text()
    for host in result.hosts:
        if host.error is not None:
            report.append(f"{host.host}  ", style="bold")
            report.append(f"error: {printable(host.error)}", style="red")
        else:
            report.append(f"{host.host}  ", style="bold")
            report.append(f"rc {host.rc}", style="green" if host.rc == 0 else "red")
        report.append("\n")
        for name, text in (("stdout", host.stdout), ("stderr", host.stderr)):
            kept, left_out = _tail(text, lines)
            if name == "stderr" and kept:
                report.append("  stderr:\n", style="yellow")
            if left_out:
                report.append(f"    ... {left_out} earlier {name} line(s) not shown\n", style="dim")
            for line in kept:
                report.append(f"    {printable(line)}\n")
    count = len(result.hosts)
    if result.ok:
        report.append(f"{count} host(s): all exited 0", style="green")
    else:
        failed = result.failed
        report.append(
            f"{count} host(s): {count - len(failed)} ok, {len(failed)} failed: {', '.join(failed)}",
            style="red",
        )
    return report


# --- the command line ---------------------------------------------------------------------------


def add_exec_command(commands: Any) -> argparse.ArgumentParser:
    """Register ``exec`` on the CLI's subparsers (from ``add_subparsers()``); return its parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "exec",
        help="run a shell command on every host of a group, in parallel over SSH",
        usage="%(prog)s [-h] [-i INVENTORY] [--json] [--timeout S] [--lines N] PATTERN -- CMD...",
        description="Run CMD on every host PATTERN names (a group, a host name, all, or several "
        "separated by commas), in parallel over SSH as the inventory's ansible_user. Host keys "
        "are checked against the inventory's known_hosts; unknown hosts are refused. Exit code: "
        "0 when every host exited 0, 1 when any failed or was unreachable, 2 for bad input.",
        epilog="CMD is run by the remote user's shell, its words joined by spaces as ssh does: "
        "quote it to keep your local shell from expanding it, e.g. "
        "deploykit exec app -- 'systemctl is-active shop-web'",
    )
    parser.add_argument("-i", "--inventory", help="inventory file (default: the lab's)")
    parser.add_argument(
        "--json",
        action="store_true",
        help='print {"hosts": {HOST: {rc, stdout, stderr, error}}, "failed": [HOST...]}, with '
        "the whole output",
    )
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"seconds each host may take, connection included (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--lines",
        type=line_count,
        default=DEFAULT_LINES,
        metavar="N",
        help="show only the last N lines of each host's stdout and stderr (default: every line)",
    )
    parser.add_argument("pattern", metavar="PATTERN", help="a group, a host, all, or a,b,c")
    # REMAINDER, not "*": argparse drops every "--" from a "*" list, even one meant for the host.
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD", help="the command")
    parser.set_defaults(func=_cmd_exec)
    return parser


def _cmd_exec(args: argparse.Namespace) -> int:
    command = command_line(args.command)
    # paramiko logs connection errors (with addresses) at ERROR; without a handler Python would
    # print them to stderr. The report says what failed, per host.
    logging.getLogger("paramiko").addHandler(logging.NullHandler())
    root = project_root()
    path = Path(args.inventory).resolve() if args.inventory else lab.inventory_file(root)
    result = run_on_group(
        path,
        args.pattern,
        command,
        timeout=args.timeout,
        workers=DEFAULT_WORKERS,
        roles_dir=root / "roles",
    )
    if args.json:
        # Plain json.dumps, not rich: a stable document for scripts, whatever the terminal.
        sys.stdout.write(json.dumps(result.to_dict()) + "\n")
    else:
        Console().print(format_report(result, lines=args.lines), soft_wrap=True)
    return EXIT_OK if result.ok else EXIT_FAILED
