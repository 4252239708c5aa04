"""Maintenance mode on a balancer (deploykit maintenance on|off|status; the module
deploykit.fleet.maintenance; the survey's report of a balancer). Standard library only.

While it is on, HAProxy's public frontend answers every request with a 503 page and Retry-After,
except requests from the allowed networks (they reach the app as usual) and, when the pages are
kept, GET and HEAD of the baked pages (nginx serves them as usual). The haproxy role's
configuration reads the state from two files:

- MAP_FILE, a map of ``key value`` lines: ``state`` (on/off), ``message`` (the page's text,
  HTML-escaped, then base64: a map value is one word, and HAProxy decodes it with ``b64dec``),
  ``retry_after`` (seconds), ``pages`` (served/hidden) and ``since`` (UTC, when it was turned on);
- ALLOW_FILE, an ACL of the networks (CIDR) that still reach the app.

A change is written to both files (for the next start or reload), then made in the running process
through the runtime API without a reload: for each file, ``prepare`` a new version, ``add`` its
entries to it, ``commit`` it (atomic: a request sees the old version or the new one, never a
mix). Turning on commits the allowed networks before the state; turning off, the state first:
an allowed address never meets the 503 page on the way.
"""

from __future__ import annotations

import base64
import binascii
import html
import ipaddress
import os
import re
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ansible_collections.deploykit.fleet.plugins.module_utils.haproxy import Failure, runtime

MAP_FILE = "/etc/haproxy/maintenance.map"
ALLOW_FILE = "/etc/haproxy/maintenance-allow.acl"
DEFAULT_MESSAGE = "This site is down for maintenance. Please try again in a few minutes."
DEFAULT_RETRY_AFTER = 300
MESSAGE_CHARS = 500
RETRY_AFTER_MAX = 86400
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Problem(ValueError):
    """An input maintenance mode refuses, in one sentence."""


@dataclass
class Maintenance:
    enabled: bool = False
    message: str = DEFAULT_MESSAGE
    allow: list[str] = field(default_factory=list)
    retry_after: int = DEFAULT_RETRY_AFTER
    #: GET and HEAD of the baked pages are still served.
    pages: bool = True
    #: When it was turned on (UTC, ISO 8601); None while off.
    since: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def same_as(self, other: Maintenance) -> bool:
        """The same settings (when it was turned on aside)."""
        return {**self.to_dict(), "since": None} == {**other.to_dict(), "since": None}


# --- inputs: checked on the controller before any host is contacted, and by the module ----------


def check_message(text: str) -> str:
    text = " ".join(text.split())
    if not text:
        raise Problem("the maintenance message is empty")
    if len(text) > MESSAGE_CHARS:
        raise Problem(
            f"the maintenance message has {len(text)} characters; at most {MESSAGE_CHARS}"
        )
    if _CONTROL.search(text):
        raise Problem("the maintenance message holds a control character")
    return text


def check_allow(networks: Iterable[str]) -> list[str]:
    """Each network as HAProxy reads it (an address is a /32 or /128), in order, without
    repeats."""
    checked: list[str] = []
    for network in networks:
        try:
            value = str(ipaddress.ip_network(str(network).strip(), strict=False))
        except ValueError:
            raise Problem(
                f"{network!r} is not an IP network: give an address or a CIDR such as 10.0.0.0/8"
            ) from None
        if value not in checked:
            checked.append(value)
    return checked


def check_retry_after(seconds: int) -> int:
    if not 1 <= int(seconds) <= RETRY_AFTER_MAX:
        raise Problem(f"retry-after {seconds}: give 1 to {RETRY_AFTER_MAX} seconds")
    return int(seconds)


def wanted(
    enabled: bool,
    *,
    message: str | None = None,
    allow: Iterable[str] = (),
    retry_after: int = DEFAULT_RETRY_AFTER,
    pages: bool = True,
    now: Maintenance | None = None,
) -> Maintenance:
    """The state to set. Off is the defaults; on keeps its ``since`` while it stays on."""
    if not enabled:
        return Maintenance()
    since = now.since if now is not None and now.enabled and now.since else _utc_now()
    return Maintenance(
        enabled=True,
        message=check_message(message or DEFAULT_MESSAGE),
        allow=check_allow(allow),
        retry_after=check_retry_after(retry_after),
        pages=pages,
        since=since,
    )


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# --- the map's entries ----------------------------------------------------------------------------


def entries(state: Maintenance) -> dict[str, str]:
    """The map's entries for ``state``: every value one word."""
    return {
        "state": "on" if state.enabled else "off",
        "message": base64.b64encode(html.escape(state.message).encode()).decode(),
        "retry_after": str(state.retry_after),
        "pages": "served" if state.pages else "hidden",
        "since": state.since or "-",
    }


def from_entries(values: Mapping[str, str], allow: Iterable[str]) -> Maintenance:
    """The state a map's entries and an ACL's networks describe (what cannot be read: the
    default)."""
    try:
        message = html.unescape(base64.b64decode(values.get("message", ""), validate=True).decode())
    except (binascii.Error, UnicodeDecodeError):
        message = ""
    try:
        retry_after = int(values.get("retry_after", DEFAULT_RETRY_AFTER))
    except ValueError:
        retry_after = DEFAULT_RETRY_AFTER
    enabled = values.get("state") == "on"
    since = values.get("since")
    return Maintenance(
        enabled=enabled,
        message=message or DEFAULT_MESSAGE,
        allow=list(allow),
        retry_after=retry_after,
        pages=values.get("pages", "served") != "hidden",
        since=since if enabled and since and since != "-" else None,
    )


def parse_map(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and not words[0].startswith("#"):
            values[words[0]] = words[1]
    return values


def parse_acl(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


# --- the files ----------------------------------------------------------------------------------


def read_files(map_file: str = MAP_FILE, allow_file: str = ALLOW_FILE) -> Maintenance:
    return from_entries(parse_map(_read(map_file)), parse_acl(_read(allow_file)))


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return ""


def write_files(state: Maintenance, map_file: str = MAP_FILE, allow_file: str = ALLOW_FILE) -> None:
    """Both files, each replaced atomically (root's, mode 0644: HAProxy reads them at start)."""
    header = "# deploykit maintenance mode: written by deploykit maintenance on|off.\n"
    _replace(map_file, header + "".join(f"{k} {v}\n" for k, v in entries(state).items()))
    _replace(allow_file, header + "".join(f"{network}\n" for network in state.allow))


def _replace(path: str, content: str) -> None:
    directory = os.path.dirname(path) or "."
    fd, temporary = tempfile.mkstemp(prefix=".maintenance-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


# --- the running HAProxy ------------------------------------------------------------------------


def read_runtime(
    socket: str, map_file: str = MAP_FILE, allow_file: str = ALLOW_FILE
) -> Maintenance:
    """The state the running HAProxy enforces (``show map``, ``show acl``: lines
    ``0xID KEY VALUE`` and ``0xID PATTERN``)."""
    values = {}
    for line in _answer(socket, f"show map {map_file}").splitlines():
        words = line.split()
        if len(words) >= 3:
            values[words[1]] = words[2]
    acl = _answer(socket, f"show acl {allow_file}")
    rows = (line.split() for line in acl.splitlines())
    networks = [words[1] for words in rows if len(words) >= 2]
    return from_entries(values, networks)


def apply_runtime(
    socket: str, state: Maintenance, map_file: str = MAP_FILE, allow_file: str = ALLOW_FILE
) -> None:
    """Make ``state`` the running HAProxy's, one atomic commit per file, no reload."""
    acl = ("acl", allow_file, state.allow)
    map_ = ("map", map_file, [f"{k} {v}" for k, v in entries(state).items()])
    for kind, path, lines in (acl, map_) if state.enabled else (map_, acl):
        version = _answer(socket, f"prepare {kind} {path}")
        found = re.search(r"New version created: (\d+)", version)
        if not found:
            raise Failure(f"prepare {kind} {path}: {version.strip() or 'no answer'}")
        commands = [f"add {kind} @{found[1]} {path} {line}" for line in lines]
        commands.append(f"commit {kind} @{found[1]} {path}")
        answer = _answer(socket, "; ".join(commands)).strip()
        if answer:
            raise Failure(f"{kind} {path}: HAProxy answered: {answer.splitlines()[0]}")


def _answer(socket: str, command: str) -> str:
    answer = runtime(socket, command)
    first = answer.strip().splitlines()[0] if answer.strip() else ""
    refused = ("Unknown", "Missing", "This command", "Permission")
    if first.startswith(refused) or "not found" in first:
        raise Failure(f"'{command[:80]}': HAProxy answered: {first}")
    return answer
