"""``deploykit logs PATTERN``: the application's journal from every host PATTERN names, merged.

On each host ``journalctl`` reads the application's units (``<app>-web.service``, the worker's
``<app>-worker@<release>.service``, one per release, and the ``<app>-worker.service`` of a
deploykit from before them, with systemd's own lines about them, such as a start that failed) as
JSON. The lines come back over SSH (:mod:`deploykit.remote`: the inventory's connection settings,
host keys checked) and are merged by their journal timestamp, each with its host. ``--follow``
prints the merged tail, then every host's new lines as they come, each host on its own
connection from the tail's last line on (the journal's cursor: nothing missed, nothing twice),
until Ctrl-C. The hosts' ``journalctl -f`` runs on a pseudo-terminal, so that the closed
connection hangs it up: nothing is left running on the hosts.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from deploykit import remote

__all__ = [
    "DEFAULT_LINES",
    "LogLine",
    "Tail",
    "follow",
    "journal_command",
    "parse_line",
    "parse_since",
    "tail",
]

#: Lines shown by default: the newest of all hosts' lines, merged.
DEFAULT_LINES: Final = 50

#: Seconds the streams have to end once they are closed (Ctrl-C) before the controller exits.
_CLOSE_SECONDS: Final = 5.0

_DURATION: Final = re.compile(r"^\s*(\d+)\s*(s|m|h|d)\s*$")
_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# The journal's fields a line needs (the timestamp and the cursor always come with -o json).
_FIELDS: Final = "MESSAGE,PRIORITY,_SYSTEMD_UNIT,UNIT,SYSLOG_IDENTIFIER"


def parse_since(text: str) -> str:
    """``--since``: a duration back from now (``30s``, ``10m``, ``2h``, ``1d``) or a time
    (``2026-12-04T10:00``, ISO 8601; without a zone, the controller's), as journalctl's
    ``--since`` value (UTC, whatever the hosts' time zone). argparse reports a bad one (exit 2)."""
    duration = _DURATION.match(text)
    if duration:
        return f"-{int(duration[1]) * _SECONDS[duration[2]]}s"
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a duration (30s, 10m, 2h, 1d) or a time (2026-12-04T10:00, "
            f"2026-12-04T10:00Z), got {text!r}"
        ) from None
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def journal_command(
    app: str,
    *,
    lines: int,
    since: str | None = None,
    grep: str | None = None,
    follow: bool = False,
    after_cursor: str | None = None,
    sudo: bool = False,
) -> str:
    """The shell command that prints ``app``'s journal as JSON lines on a host (through
    ``sudo -n`` for a user other than root: the system journal is root's)."""
    # Following runs on a pseudo-terminal, where journalctl would colour its JSON.
    words = ["env", "SYSTEMD_COLORS=0", "journalctl", "--no-pager", "--quiet", "--output=json"]
    words.append(f"--output-fields={_FIELDS}")
    words += [f"--unit={app}-web.service", f"--unit={app}-worker@*.service"]
    words.append(f"--unit={app}-worker.service")
    if after_cursor is not None:
        words.append(f"--after-cursor={after_cursor}")
    else:
        words.append(f"--lines={lines}")
        if since is not None:
            words.append(f"--since={since}")
        if not follow:
            # The newest N, newest first: with --since, journalctl's --lines alone keeps the
            # oldest N after it.
            words.append("--reverse")
    if grep is not None:
        words.append(f"--grep={grep}")
    if follow:
        words.append("--follow")
    return shlex.join(["sudo", "-n", *words] if sudo else words)


@dataclass(frozen=True)
class LogLine:
    """One journal entry of one host."""

    host: str
    time: float  # seconds since the epoch: the journal's realtime timestamp
    unit: str
    priority: int | None
    message: str
    cursor: str = ""

    @property
    def when(self) -> str:
        stamp = datetime.fromtimestamp(self.time, UTC).isoformat(timespec="milliseconds")
        return stamp.replace("+00:00", "Z")

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "time": self.when,
            "unit": self.unit,
            "priority": self.priority,
            "message": self.message,
        }

    def text(self, host_width: int = 0) -> str:
        """``TIME HOST UNIT: MESSAGE`` for people, control characters shown escaped."""
        unit = self.unit.removesuffix(".service")
        return remote.printable(f"{self.when} {self.host:<{host_width}} {unit}: {self.message}")


def _message(value: Any) -> str:
    # The journal gives a message that is not valid UTF-8 as a list of byte values.
    if isinstance(value, list):
        return bytes(b for b in value if isinstance(b, int) and 0 <= b < 256).decode(
            "utf-8", "replace"
        )
    return "" if value is None else str(value)


def parse_line(host: str, raw: str) -> LogLine | None:
    """One line of ``journalctl --output=json``; None for any other line (a message of ssh,
    sudo or journalctl itself)."""
    try:
        entry = json.loads(raw)
        time = int(entry["__REALTIME_TIMESTAMP"]) / 1_000_000
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(entry, Mapping):
        return None
    # systemd's own lines about a unit name it in UNIT; the unit's processes' in _SYSTEMD_UNIT.
    unit = entry.get("UNIT") or entry.get("_SYSTEMD_UNIT") or entry.get("SYSLOG_IDENTIFIER")
    priority = entry.get("PRIORITY")
    return LogLine(
        host=host,
        time=time,
        unit=str(unit or "?"),
        priority=int(str(priority)) if str(priority).isdigit() else None,
        message=_message(entry.get("MESSAGE")),
        cursor=str(entry.get("__CURSOR") or ""),
    )


def merge(lines: Sequence[LogLine], last: int) -> list[LogLine]:
    """The newest ``last`` lines of every host's, oldest first."""
    ordered = sorted(lines, key=lambda line: (line.time, line.host))
    return ordered[len(ordered) - last :] if last else []


@dataclass(frozen=True)
class Tail:
    """The merged tail, each host's last cursor (where following goes on), and the hosts that
    could not be read, with why."""

    lines: list[LogLine]
    cursors: dict[str, str]
    errors: dict[str, str]


def _journal_failure(result: remote.HostResult) -> str | None:
    if result.error is not None:
        return result.error
    # journalctl --grep exits 1 when nothing matched, with nothing on stderr.
    if result.rc == 0 or (result.rc == 1 and not result.stderr.strip()):
        return None
    said = [line for line in result.stderr.splitlines() if line.strip()]
    return remote.printable(f"journalctl exited {result.rc}: {said[-1] if said else 'no message'}")


def tail(
    targets: Sequence[remote.SshTarget],
    command_for: Callable[[remote.SshTarget], str],
    *,
    lines: int,
    timeout: float,
) -> Tail:
    """Every host's last ``lines`` lines (``command_for(target)`` prints them), merged."""
    found: list[LogLine] = []
    cursors: dict[str, str] = {}
    errors: dict[str, str] = {}
    by_command: dict[str, list[remote.SshTarget]] = {}
    for target in targets:
        by_command.setdefault(command_for(target), []).append(target)
    for command, group in by_command.items():
        for result in remote.run_on_targets(group, command, timeout=timeout).hosts:
            failure = _journal_failure(result)
            if failure is not None:
                errors[result.host] = failure
                continue
            parsed = [parse_line(result.host, raw) for raw in result.stdout.splitlines()]
            host_lines = sorted((line for line in parsed if line), key=lambda line: line.time)
            found.extend(host_lines)
            if host_lines and host_lines[-1].cursor:
                cursors[result.host] = host_lines[-1].cursor
    return Tail(merge(found, lines), cursors, errors)


def follow(
    targets: Sequence[remote.SshTarget],
    command_for: Callable[[remote.SshTarget], str],
    *,
    timeout: float,
    on_line: Callable[[LogLine], None],
    on_note: Callable[[str, str], None],
    stop: threading.Event,
) -> dict[str, str]:
    """Stream every host's new lines to ``on_line`` (one call at a time) until ``stop`` is set
    or every host's stream has ended; lines that are not the journal's go to ``on_note(host,
    line)``. Returns the hosts whose stream failed or ended, with why."""
    printing = threading.Lock()

    def handle(host: str, raw: str) -> None:
        line = parse_line(host, raw)
        with printing:
            if line is not None:
                on_line(line)
            elif raw.strip():
                on_note(host, remote.printable(raw.strip()))

    streams = [
        remote.LineStream(target, command_for(target), timeout=timeout, on_line=handle)
        for target in targets
    ]
    results: dict[str, remote.HostResult] = {}

    def run(stream: remote.LineStream) -> None:
        results[stream.target.host] = stream.run()

    # Daemon threads: a stream that does not end on close (an SSH library stuck on a dead
    # connection) must not keep the controller from exiting; its connection closes with it.
    threads = [
        threading.Thread(target=run, args=(stream,), name=f"logs-{stream.target.host}", daemon=True)
        for stream in streams
    ]
    for thread in threads:
        thread.start()
    try:
        while not stop.is_set() and any(thread.is_alive() for thread in threads):
            stop.wait(0.2)
    finally:
        stop.set()
        for stream in streams:
            stream.close()
        deadline = time.monotonic() + _CLOSE_SECONDS
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
    ended: dict[str, str] = {}
    for host, result in results.items():
        if result.error == "closed":
            continue
        ended[host] = result.error or f"the journal's stream ended (exit {result.rc})"
    return ended
