"""Redis replication under Sentinel (the redis role with redis_sentinel). Standard library only.

Three facts, one implementation each, used by the modules deploykit.fleet.redis_primary,
redis_sentinel and redis_replica on the cache hosts (and by tests/unit/test_sentinel.py):

- **which host is the primary now**: the answer of the Sentinels of the group (the most common
  one, when they disagree mid-failover), else the primary the inventory names (a first run, no
  Sentinel yet). After a failover, Sentinel's choice holds: a converge never moves the primary
  back;
- **what a Sentinel watches**: its users (``default`` off, the application's user limited to
  finding the primary, the Sentinels' own user), the credentials the Sentinels use with each other
  and with Redis, and the watched primary with its quorum and timeouts. Sentinel keeps its state in
  its own file (it rewrites it on every change), so these are set through its commands and saved
  with SENTINEL FLUSHCONFIG, never by templating the file;
- **what a Redis replicates from**: REPLICAOF the primary (or NO ONE on the primary), with the
  replication user's credentials, at runtime; the role's file says the same for the next start.

The client is a minimal RESP2 client: one connection per call, AUTH first, short timeouts.
"""

from __future__ import annotations

import hashlib
import socket
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

#: Seconds to connect and to wait for each reply: a Sentinel or a Redis on the private network
#: answers in milliseconds; one that does not is treated as down.
TIMEOUT = 2.0

#: What the application's user may ask a Sentinel: where the primary and the replicas are. Not
#: SENTINEL SET, FAILOVER, REMOVE, MONITOR or CONFIG: those stay with the Sentinels' own user.
SENTINEL_APP_RULES = (
    "-@all",
    "+auth",
    "+hello",
    "+ping",
    "+client|setname",
    "+sentinel|get-master-addr-by-name",
    "+sentinel|masters",
    "+sentinel|master",
    "+sentinel|replicas",
    "+sentinel|slaves",
    "+sentinel|sentinels",
)
#: The Sentinels' own user, on the Sentinels (each other, and the role's checks): everything.
SENTINEL_PEER_RULES = ("~*", "&*", "+@all")


class RespError(Exception):
    """The server answered with an error reply."""


class Unreachable(Exception):
    """No answer: refused, timed out, or the connection broke."""


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def password_hash(password: str) -> str:
    """The form Redis keeps a password in (ACL ``#<sha256>``)."""
    return hashlib.sha256(password.encode()).hexdigest()


def acl_rules(user: str, password: str, rules: Sequence[str]) -> list[str]:
    """ACL SETUSER arguments that make the user exactly this: one password, these rules."""
    return [user, "reset", "on", "#" + password_hash(password), *rules]


def _encode(args: Iterable[object]) -> bytes:
    parts = [str(arg).encode() for arg in args]
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


def _read(stream: Any) -> Any:
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise Unreachable("the connection closed mid-reply")
    kind, rest = line[:1], line[1:-2].decode(errors="replace")
    if kind == b"+":
        return rest
    if kind == b"-":
        return RespError(rest)
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        return None if size < 0 else stream.read(size + 2)[:-2].decode(errors="replace")
    if kind == b"*":
        size = int(rest)
        return None if size < 0 else [_read(stream) for _ in range(size)]
    raise Unreachable(f"not a RESP reply: {line[:40]!r}")


class Client:
    """One connection to a Redis or a Sentinel, logged in as ``user``."""

    def __init__(
        self, address: Address, user: str, password: str, *, timeout: float = TIMEOUT
    ) -> None:
        self.address = address
        try:
            self._sock = socket.create_connection((address.host, address.port), timeout=timeout)
        except OSError as error:
            raise Unreachable(f"{address}: {error}") from None
        self._stream = self._sock.makefile("rb")
        self.call("AUTH", user, password)

    def call(self, *args: object) -> Any:
        """Send one command; an error reply raises RespError."""
        try:
            self._sock.sendall(_encode(args))
            reply = _read(self._stream)
        except OSError as error:
            raise Unreachable(f"{self.address}: {error}") from None
        if isinstance(reply, RespError):
            raise reply
        return reply

    def close(self) -> None:
        self._stream.close()
        self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def pairs(reply: list[Any]) -> dict[str, Any]:
    """A flat [key, value, key, value, ...] reply as a dict."""
    return dict(zip(reply[::2], reply[1::2], strict=False))


# --- which host is the primary --------------------------------------------------------------------


@dataclass(frozen=True)
class PrimaryAnswer:
    """Where the primary is, and who said so."""

    primary: Address
    #: "sentinel" when the Sentinels answered, "inventory" when none knew the name.
    source: str
    #: Each Sentinel asked: its answer ("host:port"), or why it gave none.
    answers: dict[str, str]


def find_primary(
    sentinels: Sequence[Address],
    name: str,
    user: str,
    password: str,
    default: Address,
    *,
    timeout: float = TIMEOUT,
) -> PrimaryAnswer:
    """The primary as most Sentinels that know ``name`` see it; ``default`` when none does."""
    answers: dict[str, str] = {}
    found: list[Address] = []
    for sentinel in sentinels:
        try:
            with Client(sentinel, user, password, timeout=timeout) as client:
                reply = client.call("SENTINEL", "GET-MASTER-ADDR-BY-NAME", name)
        except (Unreachable, RespError) as error:
            answers[str(sentinel)] = f"no answer ({error})"
            continue
        if not reply:
            answers[str(sentinel)] = f"does not watch {name}"
            continue
        found.append(Address(reply[0], int(reply[1])))
        answers[str(sentinel)] = str(found[-1])
    if not found:
        return PrimaryAnswer(default, "inventory", answers)
    # Most votes; on a tie, the answer of the Sentinel that comes first in the inventory.
    votes = Counter(found)
    primary = next(address for address in found if votes[address] == max(votes.values()))
    return PrimaryAnswer(primary, "sentinel", answers)


# --- what a Sentinel watches ----------------------------------------------------------------------


@dataclass(frozen=True)
class Watch:
    """What a Sentinel is to watch: the primary under ``name`` and how to judge it."""

    name: str
    primary: Address
    quorum: int
    down_after_ms: int
    failover_timeout_ms: int
    #: The Sentinels' user and password, on the Redis servers and on each other.
    user: str
    password: str


def _config_value(config_text: str, *words: str) -> str | None:
    """The value of the last ``sentinel <words...> <value>`` line of a Sentinel's file."""
    value = None
    for line in config_text.splitlines():
        parts = line.split()
        if len(parts) == len(words) + 2 and parts[0] == "sentinel" and tuple(parts[1:-1]) == words:
            value = parts[-1].strip('"')
    return value


def plan_sentinel(
    client: Client, watch: Watch, app_user: str, app_password: str, config_text: str
) -> list[list[object]]:
    """The commands that make the Sentinel behind ``client`` watch as ``watch`` says (none when it
    already does). ``config_text`` is the Sentinel's file, the only place its passwords show."""
    commands: list[list[object]] = []
    wanted_users = {
        app_user: acl_rules(app_user, app_password, SENTINEL_APP_RULES),
        watch.user: acl_rules(watch.user, watch.password, SENTINEL_PEER_RULES),
    }
    for user, setuser in wanted_users.items():
        if not _acl_matches(client, user, setuser):
            commands.append(["ACL", "SETUSER", *setuser])
    if _config_value(config_text, "sentinel-user") != watch.user:
        commands.append(["SENTINEL", "CONFIG", "SET", "sentinel-user", watch.user])
    if _config_value(config_text, "sentinel-pass") != watch.password:
        commands.append(["SENTINEL", "CONFIG", "SET", "sentinel-pass", watch.password])
    try:
        current = pairs(client.call("SENTINEL", "MASTER", watch.name))
    except RespError:
        current = None
    if current is None:
        commands.append(
            [
                "SENTINEL",
                "MONITOR",
                watch.name,
                watch.primary.host,
                watch.primary.port,
                watch.quorum,
            ]
        )
        current = {}
    settings: list[object] = []
    for key, value in (
        ("quorum", watch.quorum),
        ("down-after-milliseconds", watch.down_after_ms),
        ("failover-timeout", watch.failover_timeout_ms),
    ):
        if str(current.get(key)) != str(value):
            settings += [key, value]
    if _config_value(config_text, "auth-user", watch.name) != watch.user:
        settings += ["auth-user", watch.user]
    if _config_value(config_text, "auth-pass", watch.name) != watch.password:
        settings += ["auth-pass", watch.password]
    if settings:
        commands.append(["SENTINEL", "SET", watch.name, *settings])
    return commands


def _acl_matches(client: Client, user: str, setuser: list[str]) -> bool:
    """Whether ``user`` already is what ACL SETUSER ``setuser`` makes it: compared as the server
    itself normalises the rules, by applying them to a scratch user."""
    scratch = "deploykit-acl-probe"
    try:
        client.call("ACL", "SETUSER", scratch, *setuser[1:])
        wanted = client.call("ACL", "GETUSER", scratch)
    finally:
        client.call("ACL", "DELUSER", scratch)
    try:
        current = client.call("ACL", "GETUSER", user)
    except RespError:
        return False
    return current is not None and pairs(wanted) == pairs(current)


def apply_sentinel(client: Client, commands: Sequence[Sequence[object]]) -> None:
    """Run ``plan_sentinel``'s commands and save the Sentinel's file."""
    for command in commands:
        client.call(*command)
    if commands:
        client.call("SENTINEL", "FLUSHCONFIG")


# --- what a Redis replicates from -----------------------------------------------------------------


def plan_replica(
    client: Client, primary: Address | None, user: str, password: str
) -> list[list[object]]:
    """The commands that make the Redis behind ``client`` the primary (``primary`` None) or a
    replica of ``primary`` with the replication credentials; none when it already is."""
    commands: list[list[object]] = []
    settings = pairs(client.call("CONFIG", "GET", "master*"))
    if settings.get("masteruser") != user:
        commands.append(["CONFIG", "SET", "masteruser", user])
    if settings.get("masterauth") != password:
        commands.append(["CONFIG", "SET", "masterauth", password])
    role = client.call("ROLE")
    if primary is None:
        if role[0] != "master":
            commands.append(["REPLICAOF", "NO", "ONE"])
    elif role[0] != "slave" or Address(role[1], int(role[2])) != primary:
        commands.append(["REPLICAOF", primary.host, primary.port])
    return commands


def describe(command: Sequence[object], secrets: Iterable[str]) -> str:
    """A command as it can be shown: passwords and password hashes replaced."""
    hidden = set(secrets) | {"#" + password_hash(s) for s in secrets}
    return " ".join("********" if str(part) in hidden else str(part) for part in command)
