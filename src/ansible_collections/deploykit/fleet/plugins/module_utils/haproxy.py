#!/usr/bin/python3
"""deploykit's client of HAProxy's runtime API, installed on the balancers by the haproxy role
(Python standard library only). It talks to the admin socket directly: no socat, no netcat.

Every command prints one JSON object on stdout. An error is one line on stderr. Exit status: 0
done, 1 failed (an unknown backend or server, the socket, a server not UP in time), 2 usage.
--socket PATH (default /run/haproxy/admin.sock) goes before or after the command.

deploykit-haproxy servers [--backend NAME]
    Every server of every backend (or of one), as HAProxy sees it now:
    {"servers": [{"backend", "server", "address" (ip:port), "status" (HAProxy's own text: "UP",
    "DOWN", "DRAIN", "MAINT", "UP 1/2", "DOWN 1/2", "no check", ...), "admin" ("ready", "drain"
    or "maint": what an operator or a deploy set), "operational" ("up" or "down": "down" in
    maint or once its checks failed), "sessions" (current sessions, scur), "check" (the last
    completed check's
    status, "L7OK", "L4CON", ...; null while checks are paused by maint), "check_detail" (its
    description, reason and code, e.g. "Layer4 connection problem: Connection refused"),
    "weight"}]}. The status and counters come from `show stat`, admin and operational from
    `show servers state` (its admin bits: a drained server that is DOWN shows only "DOWN").

deploykit-haproxy state BACKEND SERVER
    That one server's object, as in `servers`.

deploykit-haproxy maint BACKEND SERVER
    `set server BACKEND/SERVER state maint` (no new requests, checks paused; requests in flight
    go on), then that server's object.

deploykit-haproxy drain BACKEND SERVER [--timeout SECONDS] [--maint]
    `set server BACKEND/SERVER state drain` (no new requests; checks go on), then every 0.1 s read
    its current sessions (scur, plus requests queued for it, qcur, which is 0 without a maxconn)
    until there are none or --timeout (default 30) has passed: a bounded drain. With --maint, the
    server is then put in maint. Prints {"backend", "server", "waited" (seconds), "sessions_left"
    (above 0 only when the timeout cut the wait: the caller decides), "status"}. Exit 0 even
    then; 1 for an unknown backend or server, or the socket.

deploykit-haproxy ready BACKEND SERVER [--timeout SECONDS]
    Return the server to service, and return only once HAProxy's own health check says it is
    up: every 0.1 s until its status is exactly "UP" (not "UP 1/2", "DRAIN", "MAINT" or
    "DOWN"; "no check" for a server without checks, which HAProxy trusts as it is). Prints
    {"backend", "server", "waited", "status"}. Exit 1 when --timeout (default 30) passes first,
    naming the server, its last status and its last check.

deploykit-haproxy watch BACKEND SERVER [--timeout SECONDS] [--until-back]
    Follow one server: read its state every 0.1 s and print a JSON line each time its status or
    operational state changes (the first read included): {"t" (the wall clock, which a host's
    containers share), "status", "operational", "admin", "check", "check_detail", "polls"}. A
    read that fails (HAProxy reloading) prints {"t", "error"} and the watch goes on. It ends
    after --timeout (default 30) or, with --until-back, once the server has been down and is
    "UP" again; the last line is {"t", "end": true, "polls", "seen_down", "back"}. Exit 0; 1
    for an unknown backend or server, or the socket, at the start. For benches, fault tests
    and an operator's eye during a deploy.

How HAProxy 2.6.12 (Debian 12) treats a server that leaves maint with checks enabled, measured on
the molecule scenario (inter 500 ms, fall 2, rise 2):

- `set server ... state ready` from maint puts the server UP at once, before any check: HAProxy
  gives it `rise` health ("UP 1/2": one success short of full health, one failure from DOWN),
  logs "is UP/READY (leaving forced maintenance)" and sends it requests. The first check, within
  `inter` (0.07 to 0.22 s here), takes it to "UP", or DOWN at once. It does not matter that
  the server was DOWN before the maint. With its app stopped, 4 and 5 of 6 concurrent requests
  sent right after "ready" went to it first; the connection was refused and `option redispatch`
  moved them to the other clone (the server's wredis counter rose by as many). With two clients
  looping through the balancer during `ready --timeout 1.5` on that server, 5 to 15 requests went
  to it when straight from maint to ready, none through drain as below (3 runs each). An app
  that accepts connections and then fails would have answered those requests with errors.
- Leaving drain is different: checks are never paused while drained, so the server's status is
  current and "ready" makes it UP (or leaves it DOWN) at once.
- `set server ... state drain` from maint leaves maint just the same ("DRAIN 1/2") but gets no
  new requests; the first check takes it to "DRAIN" or DOWN (measured: no request sent to it).
- A DOWN server whose app recovers needs `rise` checks in a row: "DOWN 1/2", then "UP" (0.5 s
  apart here).

So `ready` goes through drain when the server is in maint: it leaves maint as drain, waits for
the first check to conclude ("DRAIN" or "DOWN..."), and only then sets it ready. No request
reaches a server that HAProxy has not checked since the maint. "UP 1/2" never counts as ready:
HAProxy already sends requests to it, but no check has confirmed it yet (it also shows a server
UP that just failed one check). If the deadline passes before that first check concluded, the
server is left drained (no requests) and the command fails; otherwise it is left ready, and
HAProxy's checks bring it UP by themselves once its app answers.

While a check is in progress, HAProxy's check_status puts "* " before the last result, and it has
already reset that result's code (to 0) and reason for the check that runs (measured on 2.6.12:
"* L7OK", check_code 0, for about 2 ms of every 500 ms check interval). The helper drops the mark
and reports the last status and its description without the code it no longer has. `servers`,
`state` and the last read of `ready` (the one after its deadline, which decides and names the
last check) read `show stat` again every 10 ms (for at most 2.5 s, beyond the default 2 s
`timeout check`) until no check of the servers they report is in progress, so that two reads of
a steady backend agree; the other polls of drain, ready and watch read once each.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import socket
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

DEFAULT_SOCKET = "/run/haproxy/admin.sock"


def server_argument_spec(**more: dict) -> dict:
    """The argument spec of a module acting on one server of a backend through the admin socket
    (drain, ready, soak): backend, server and socket, plus MORE."""
    return {
        "backend": {"type": "str", "required": True},
        "server": {"type": "str", "required": True},
        "socket": {"type": "path", "default": DEFAULT_SOCKET},
        **more,
    }


# Polling period of drain and ready (community.general.haproxy polls every second).
POLL_SECONDS = 0.1
# How long a report waits for checks in progress to conclude (a check lasts at most the role's
# default `timeout check`, 2 s; the next starts `inter` later), and how often it looks.
SETTLE_SECONDS = 2.5
SETTLE_POLL_SECONDS = 0.01
# One command's budget on the socket: HAProxy answers `show stat` in milliseconds; a stuck
# process must not hang a deploy.
IO_TIMEOUT_SECONDS = 5.0
# srv_admin_state bits of `show servers state`, as HAProxy derives MAINT/DRAIN/READY from them
# (include/haproxy/server-t.h): FMAINT|IMAINT|RMAINT, and FDRAIN|IDRAIN.
ADMIN_MAINT = 0x23
ADMIN_DRAIN = 0x18
# srv_op_state: 0 stopped; 1 starting (slowstart), 2 running, 3 stopping (NOLB) all take requests.
OP_STOPPED = 0
SERVER_ROW = "2"  # `show stat` type column: 0 frontend, 1 backend, 2 server, 3 listener
EX_FAILED = 1
EX_USAGE = 2

Server = dict[str, Any]


class Failure(Exception):
    """A failure to report on stderr in one line, exit status 1."""


class Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (callers read stderr as one message)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EX_USAGE, f"{self.prog}: {message} (see --help)\n")


def check_path(config: str, backend: str) -> str | None:
    """The path HAProxy's health check asks in ``backend`` (``http-check send ... uri PATH`` or
    ``option httpchk [METHOD] PATH``), or None (no HTTP check, or no such backend)."""
    try:
        with open(config, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    inside = False
    for line in lines:
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if not line[:1].isspace():
            inside = words[:2] == ["backend", backend]
            continue
        if not inside:
            continue
        if words[:2] == ["http-check", "send"] and "uri" in words[:-1]:
            return words[words.index("uri") + 1]
        if words[:2] == ["option", "httpchk"] and len(words) > 2:
            return words[-1] if words[-1].startswith("/") else None
    return None


def runtime(path: str, command: str) -> str:
    """Send one command to the runtime API and return its whole answer (HAProxy closes the
    connection after answering a command sent without `prompt`)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(IO_TIMEOUT_SECONDS)
            conn.connect(path)
            conn.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
    except FileNotFoundError:
        raise Failure(f"{path}: no such socket: is HAProxy running?") from None
    except PermissionError:
        raise Failure(
            f"{path}: permission denied: run as root or as a member of group haproxy"
        ) from None
    except ConnectionRefusedError:
        raise Failure(f"{path}: connection refused: HAProxy is not listening there") from None
    except TimeoutError:
        raise Failure(f"{path}: no answer to '{command}' within {IO_TIMEOUT_SECONDS:g} s") from None
    except OSError as error:
        raise Failure(f"{path}: {error.strerror or error}") from None
    return b"".join(chunks).decode(errors="replace")


def first_line(answer: str) -> str:
    return next((line for line in answer.splitlines() if line.strip()), "").strip()


def stat_rows(path: str) -> list[dict[str, str]]:
    """The server rows of `show stat` (its CSV: a header line starting with '# ')."""
    answer = runtime(path, "show stat")
    if not answer.startswith("# pxname,"):
        raise Failure(f"{path}: 'show stat' answered: {first_line(answer) or 'nothing'}")
    rows = csv.DictReader(io.StringIO(answer[2:]))
    return [row for row in rows if row.get("type") == SERVER_ROW]


def admin_states(path: str) -> dict[tuple[str, str], tuple[int, int]]:
    """(backend, server) -> (srv_op_state, srv_admin_state), from `show servers state` (format 1:
    a version line, a '#' header, then space-separated fields)."""
    answer = runtime(path, "show servers state")
    lines = answer.splitlines()
    if not lines or lines[0].strip() != "1":
        raise Failure(f"{path}: 'show servers state' answered: {first_line(answer) or 'nothing'}")
    states: dict[tuple[str, str], tuple[int, int]] = {}
    for line in lines[1:]:
        fields = line.split()
        if len(fields) < 7 or line.startswith("#"):
            continue
        try:
            states[(fields[1], fields[3])] = (int(fields[5]), int(fields[6]))
        except ValueError:
            continue
    return states


def as_int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def check_in_progress(row: dict[str, str]) -> bool:
    return (row.get("check_status") or "").startswith("* ")


def check_result(row: dict[str, str]) -> tuple[str | None, str | None]:
    """The last completed check, and its description ("Layer7 wrong status: Service
    Unavailable (code 503)"); None for both while checks are paused or off."""
    status = (row.get("check_status") or "").removeprefix("* ").strip()
    if not status:
        return None, None
    detail = row.get("check_desc") or status
    if check_in_progress(row):
        # The reason and code now belong to the running check: HAProxy has reset them.
        return status, detail
    if reason := (row.get("last_chk") or "").strip():
        detail += f": {reason}"
    if code := (row.get("check_code") or "").strip():
        detail += f" (code {code})"
    return status, detail


def admin_name(*, maint: bool, drain: bool) -> str:
    """HAProxy's own precedence: maint over drain over ready."""
    return "maint" if maint else "drain" if drain else "ready"


def last_check(row: dict[str, str]) -> str:
    """The last check for a message: "L4CON (Layer4 connection problem: Connection refused)"."""
    check, detail = check_result(row)
    return f"{check} ({detail})" if check else "none (checks paused or off)"


def describe(row: dict[str, str], state: tuple[int, int] | None) -> Server:
    status = row.get("status", "")
    if state is None:
        # Not in `show servers state` (added between the two reads): judge from the status.
        admin = admin_name(maint=status.startswith("MAINT"), drain=status.startswith("DRAIN"))
        operational = "down" if status.startswith(("DOWN", "MAINT")) else "up"
    else:
        op_state, bits = state
        admin = admin_name(maint=bool(bits & ADMIN_MAINT), drain=bool(bits & ADMIN_DRAIN))
        operational = "down" if op_state == OP_STOPPED else "up"
    check, check_detail = check_result(row)
    return {
        "backend": row["pxname"],
        "server": row["svname"],
        "address": row.get("addr", ""),
        "status": status,
        "admin": admin,
        "operational": operational,
        "sessions": as_int(row.get("scur")),
        "check": check,
        "check_detail": check_detail,
        "weight": as_int(row.get("weight")),
    }


def settled_rows(path: str, reported: Callable[[dict[str, str]], bool]) -> list[dict[str, str]]:
    """stat_rows, read again (bounded) while a check of a server to be reported is in progress,
    since HAProxy has then reset its last result's code (see above)."""
    deadline = time.monotonic() + SETTLE_SECONDS
    rows = stat_rows(path)
    while any(check_in_progress(row) for row in rows if reported(row)):
        if time.monotonic() >= deadline:
            break
        time.sleep(SETTLE_POLL_SECONDS)
        rows = stat_rows(path)
    return rows


def list_servers(path: str, backend: str | None = None) -> list[Server]:
    rows = settled_rows(path, lambda row: backend is None or row["pxname"] == backend)
    if backend is not None:
        backends = sorted({row["pxname"] for row in rows})
        rows = [row for row in rows if row["pxname"] == backend]
        if not rows:
            raise Failure(
                f"no backend '{backend}' with servers (backends: {', '.join(backends) or 'none'})"
            )
    states = admin_states(path)
    return [describe(row, states.get((row["pxname"], row["svname"]))) for row in rows]


def find_row(path: str, backend: str, server: str, *, settle: bool = False) -> dict[str, str]:
    """The server's `show stat` row (with settle, once no check of it is in progress, bounded:
    see settled_rows); a Failure that says what exists when there is none."""
    if settle:
        rows = settled_rows(path, lambda row: (row["pxname"], row["svname"]) == (backend, server))
    else:
        rows = stat_rows(path)
    for row in rows:
        if (row["pxname"], row["svname"]) == (backend, server):
            return row
    siblings = [row["svname"] for row in rows if row["pxname"] == backend]
    if siblings:
        raise Failure(
            f"{backend}/{server}: no such server (servers of {backend}: {', '.join(siblings)})"
        )
    backends = sorted({row["pxname"] for row in rows})
    raise Failure(
        f"{backend}/{server}: no such backend (backends: {', '.join(backends) or 'none'})"
    )


def server_state(path: str, backend: str, server: str, *, settle: bool = False) -> Server:
    row = find_row(path, backend, server, settle=settle)
    return describe(row, admin_states(path).get((backend, server)))


def set_state(path: str, backend: str, server: str, state: str) -> None:
    # HAProxy answers nothing on success, one line (e.g. "No such server.") otherwise.
    answer = runtime(path, f"set server {backend}/{server} state {state}")
    if answer.strip():
        raise Failure(
            f"{backend}/{server}: 'set server state {state}' answered: {first_line(answer)}"
        )


def pending(row: dict[str, str]) -> int:
    """Sessions on the server, and requests queued for it (which it would still serve)."""
    return as_int(row.get("scur")) + as_int(row.get("qcur"))


def sleep_until_next_poll(deadline: float) -> None:
    time.sleep(max(0.0, min(POLL_SECONDS, deadline - time.monotonic())))


def cmd_servers(args: argparse.Namespace) -> dict[str, Any]:
    return {"servers": list_servers(args.socket, args.backend)}


def cmd_state(args: argparse.Namespace) -> dict[str, Any]:
    return server_state(args.socket, args.backend, args.server, settle=True)


def cmd_maint(args: argparse.Namespace) -> dict[str, Any]:
    find_row(args.socket, args.backend, args.server)
    set_state(args.socket, args.backend, args.server, "maint")
    return server_state(args.socket, args.backend, args.server)


def cmd_drain(args: argparse.Namespace) -> dict[str, Any]:
    return drain(args.socket, args.backend, args.server, timeout=args.timeout, maint=args.maint)


def drain(path: str, backend: str, server: str, *, timeout: float, maint: bool) -> dict[str, Any]:
    """Drain, wait for the sessions to end (a deadline of ``timeout`` seconds), then maint."""
    find_row(path, backend, server)
    started = time.monotonic()
    deadline = started + timeout
    set_state(path, backend, server, "drain")
    while True:
        row = find_row(path, backend, server)
        left = pending(row)
        if left == 0 or time.monotonic() >= deadline:
            break
        sleep_until_next_poll(deadline)
    waited = time.monotonic() - started
    if maint:
        set_state(path, backend, server, "maint")
        row = find_row(path, backend, server)
    return {
        "backend": backend,
        "server": server,
        "waited": round(waited, 3),
        "sessions_left": left,
        "status": row["status"],
    }


def checked_since_maint(status: str) -> bool:
    """After maint -> drain: has a check concluded? ("DRAIN 1/2" is the untested `rise` health
    HAProxy grants on leaving maint; "DRAIN" is full health; "DOWN..." a failed check.)"""
    return status in ("DRAIN", "no check") or status.startswith("DOWN")


def is_ready(status: str) -> bool:
    return status in ("UP", "no check")


def wait_for_status(
    path: str,
    backend: str,
    server: str,
    reached: Callable[[str], bool],
    *,
    deadline: float,
    failure: Callable[[dict[str, str]], str],
) -> dict[str, str]:
    """The server's row once ``reached(its status)``, read every poll; at the deadline a Failure
    whose message is ``failure(the last row)``. The read after the deadline waits out a check in
    progress (settle): that check decides, and a failure names it."""
    while True:
        past = time.monotonic() >= deadline
        row = find_row(path, backend, server, settle=past)
        if reached(row["status"]):
            return row
        if past:
            raise Failure(failure(row))
        sleep_until_next_poll(deadline)


def cmd_ready(args: argparse.Namespace) -> dict[str, Any]:
    return ready(args.socket, args.backend, args.server, timeout=args.timeout)


def ready(path: str, backend: str, server: str, *, timeout: float) -> dict[str, Any]:
    """Back into service through drain; returns once HAProxy's own check says UP, or raises
    Failure at the deadline of ``timeout`` seconds."""
    started = time.monotonic()
    deadline = started + timeout
    row = find_row(path, backend, server)
    if describe(row, admin_states(path).get((backend, server)))["admin"] == "maint":
        # Leaving maint straight to ready would send requests to a server no check has seen
        # since (see the docstring): leave it as drain until the first check has concluded.
        set_state(path, backend, server, "drain")
        wait_for_status(
            path,
            backend,
            server,
            checked_since_maint,
            deadline=deadline,
            failure=lambda row: (
                f"{backend}/{server}: no health check concluded within {timeout:g} s "
                f"of leaving maint; left drained (no requests). Last status {row['status']}, "
                f"last check {last_check(row)}"
            ),
        )
    set_state(path, backend, server, "ready")
    row = wait_for_status(
        path,
        backend,
        server,
        is_ready,
        deadline=deadline,
        failure=lambda row: (
            f"{backend}/{server} is not UP after {timeout:g} s: last status "
            f"{row['status']}, last check {last_check(row)}"
        ),
    )
    return {
        "backend": backend,
        "server": server,
        "waited": round(time.monotonic() - started, 3),
        "status": row["status"],
    }


def cmd_watch(args: argparse.Namespace) -> dict[str, Any]:
    path, backend, server = args.socket, args.backend, args.server
    find_row(path, backend, server)  # an unknown server fails now, not as a line per poll
    deadline = time.monotonic() + args.timeout
    last: tuple[str, str] | None = None
    seen_down = back = False
    polls = 0
    while time.monotonic() < deadline:
        polls += 1
        try:
            state = server_state(path, backend, server)
        except Failure as failure:
            print(json.dumps({"t": time.time(), "error": str(failure)}), flush=True)
        else:
            key = (state["status"], state["operational"])
            if key != last:
                keep = ("status", "operational", "admin", "check", "check_detail")
                line = {"t": time.time(), **{k: state[k] for k in keep}, "polls": polls}
                print(json.dumps(line), flush=True)
                last = key
            seen_down = seen_down or state["operational"] == "down"
            back = seen_down and state["status"] == "UP"
            if args.until_back and back:
                break
        sleep_until_next_poll(deadline)
    return {"t": time.time(), "end": True, "polls": polls, "seen_down": seen_down, "back": back}


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: '{text}'") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"seconds must be 0 or more: '{text}'")
    return value


def build_parser() -> Parser:
    # --socket is accepted before and after the command; SUPPRESS keeps the top-level value
    # when the command does not repeat it.
    common = Parser(add_help=False)
    common.add_argument("--socket", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser = Parser(
        prog="deploykit-haproxy",
        description="A client of HAProxy's runtime API; JSON on stdout.",
    )
    parser.add_argument(
        "--socket",
        default=DEFAULT_SOCKET,
        metavar="PATH",
        help=f"HAProxy's admin socket (default {DEFAULT_SOCKET})",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    servers = commands.add_parser("servers", parents=[common], help="every server's state")
    servers.add_argument("--backend", metavar="NAME", help="only this backend's servers")
    servers.set_defaults(run=cmd_servers)
    for name, run, summary in (
        ("state", cmd_state, "one server's state"),
        ("maint", cmd_maint, "put a server in maint"),
        ("drain", cmd_drain, "drain a server, waiting for its sessions to end (bounded)"),
        ("ready", cmd_ready, "return a server to service, waiting until its check says UP"),
        ("watch", cmd_watch, "print a JSON line at each change of a server's state"),
    ):
        command = commands.add_parser(name, parents=[common], help=summary)
        command.add_argument("backend", metavar="BACKEND")
        command.add_argument("server", metavar="SERVER")
        if name in ("drain", "ready", "watch"):
            command.add_argument(
                "--timeout",
                type=seconds,
                default=30.0,
                metavar="SECONDS",
                help="the longest wait (default 30)",
            )
        if name == "drain":
            command.add_argument(
                "--maint", action="store_true", help="then put the server in maint"
            )
        if name == "watch":
            command.add_argument(
                "--until-back",
                action="store_true",
                help="end once the server has been down and is UP again",
            )
        command.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.run(args)
    except Failure as failure:
        print(f"deploykit-haproxy {args.command}: {failure}", file=sys.stderr)
        return EX_FAILED
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
