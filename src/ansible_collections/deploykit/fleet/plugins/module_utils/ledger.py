#!/usr/bin/python3
"""deploykit's deploy ledger on the balancer: the deploy lock (a lease) and the deploy history
(stdlib only).

One deploy at a time per inventory: every deploy and rollback takes the lock on the first balancer
before anything changes and appends a record to the history when it ends, whatever the outcome.
The lock is a lease: its holder renews it while it runs (every lease/4 seconds); a lease not
renewed for more than its length ("lease" in the holder's record, seconds, default 60) is stale:
its holder is presumed dead. Every time is this host's clock, so controllers' clocks never matter.

deploykit-ledger [--dir DIR] lock acquire --holder JSON [--wait SECONDS] [--take-over]
                 [--with-history [--limit N]]
    Take the lock: DIR/deploy.lock is created atomically (written under a temporary name, then
    hard-linked to its final name: link(2) fails when the name exists, so two deploys can never
    both win, and a reader never sees a half-written holder). JSON is the holder's record (who,
    from where, which release, a token, "lease": seconds); "since" is added here, from this
    host's clock, by the attempt that wins (waiting does not count), and "lease" defaults to 60.
    Prints {"acquired": true, "holder": {...}}. When the lock is held, prints {"acquired": false,
    "holder": <the holder's record>, "age", "renewed", "stale", "stale_after"} (as lock status)
    and exits 1; with --wait, polls until the lock is free or SECONDS have passed. With
    --take-over, a STALE lease is replaced by this holder (never a live one), atomically and only
    if it is still the stale lease that was read; the answer then carries "took_over" (the old
    holder, its age and last renewal), and the history gets a "lock take-over" record. With
    --with-history, the answer holds the history's last N records too ("records", "app": as
    history show), read under the lock in the same call when it was taken (a refused one reads
    it all the same: the history is only ever appended to).
deploykit-ledger [--dir DIR] lock renew --token TOKEN
    Renew the lease whose holder carries TOKEN (the lock file's mtime is its last renewal).
    Prints {"extended": bool, "holder": ... or null, ...} (and the lease's state, as lock status);
    exits 1 when the lock is free or another holder's (taken over: that rollout lost it).
deploykit-ledger [--dir DIR] lock release [--token TOKEN] [--force] [--who WHO]
    Remove the lock. With --token, only the lock whose holder carries that token (a deploy
    releases its own lock, never a newer one). Without --token (an operator's release): a stale
    lease is released; a live one only with --force; each such release is recorded in the
    history ("lock release": WHO, the holder it removed, its last renewal, "forced").
    Prints {"released": bool, "holder": ... or null, ...}.
deploykit-ledger [--dir DIR] lock status
    Prints {"held": bool, "holder": ... or null, "age": seconds since it was taken,
    "renewed": seconds since its last renewal, "stale": bool, "stale_after": seconds} (the
    numbers null when free).
deploykit-ledger [--dir DIR] history append --record JSON
    Append one record (a JSON object) to DIR/history.jsonl, flushed to disk. "recorded" is added.
deploykit-ledger [--dir DIR] history show [--limit N]
    Prints {"records": [...], "app": ...}, oldest first (the last N when --limit is given); app:
    the application the newest rollout carried out names (null for none).
(module only) history merge, records: the records another balancer's history holds and this one
    lacks are appended, in order, as they are (the other balancers keep a copy of the history).
deploykit-ledger [--dir DIR] call < REQUEST
    Any command above, and finish (a rollout's record appended, then its lock released by its
    token, in one call), as the module takes it: REQUEST is one JSON object on stdin, the command
    and its arguments ({"command": "lock renew", "token": ...}). The controller renews a lease and
    finishes a rollout this way over SSH (a token or a record never appears in a process list).

Renew, release and take-over are serialized by flock(2) on DIR/.ledger.guard, so each reads the
holder and acts on that same holder (token-checked), never on one that replaced it meanwhile.

Exit codes: 0 done, 1 the lock is held (acquire), not renewed, or not released (another holder's
token, or a live lease without --force), 2 usage or a corrupt file (named on stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime

DEFAULT_DIR = "/var/lib/deploykit-ledger"
#: Where the ledger role installs this file as a program (roles/ledger/vars/main.yml).
HELPER = "/usr/local/libexec/deploykit-ledger"
LOCK = "deploy.lock"
HISTORY = "history.jsonl"
#: Serializes renew, release and take-over (flock(2); released by the kernel if its process dies).
GUARD = ".ledger.guard"
#: Seconds without renewal after which a lease is stale, unless its holder states its own "lease".
DEFAULT_LEASE = 60.0
#: How long a command waits for another one to leave the guard (each holds it for milliseconds).
GUARD_TIMEOUT = 10.0


class LedgerError(Exception):
    """A usage error or a corrupt file (exit 2 from the command line, a failed task from the
    module)."""


def now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_object(text: str, what: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise LedgerError(f"{what} is not JSON: {error}") from None
    if not isinstance(value, dict):
        raise LedgerError(f"{what} must be a JSON object")
    return value


def check_dir(directory: str) -> None:
    if not os.path.isdir(directory):
        raise LedgerError(
            f"{directory} does not exist: converge the ledger role on this host (site.yml, tag lb)"
        )


@contextlib.contextmanager
def guarded(directory: str, timeout: float = GUARD_TIMEOUT) -> Iterator[None]:
    """Hold the ledger's guard (flock(2) on DIR/.ledger.guard) for one read-then-change."""
    descriptor = os.open(os.path.join(directory, GUARD), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LedgerError(
                        f"{os.path.join(directory, GUARD)} stayed locked for {timeout:.0f} s "
                        "(another ledger command hangs): try again"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(descriptor)  # closing the descriptor releases the flock


def read_lock(directory: str) -> tuple[dict | None, float | None]:
    """(the holder's record, the lock file's mtime: its last renewal), or (None, None) when free."""
    path = os.path.join(directory, LOCK)
    try:
        with open(path, encoding="utf-8") as handle:
            mtime = os.fstat(handle.fileno()).st_mtime
            try:
                holder = json.load(handle)
            except (ValueError, UnicodeDecodeError) as error:
                # A lock we cannot read is still a lock: refusing is safe, `lock release` clears it.
                return {"unreadable": f"{path}: {error}"}, mtime
    except FileNotFoundError:
        return None, None
    except OSError as error:
        return {"unreadable": f"{path}: {error}"}, None
    if not isinstance(holder, dict):
        return {"unreadable": f"{path}: not a JSON object"}, mtime
    return holder, mtime


def lease_of(holder: dict) -> float:
    """The holder's lease: seconds without renewal before it is stale."""
    lease = holder.get("lease")
    if isinstance(lease, (int, float)) and not isinstance(lease, bool) and lease > 0:
        return float(lease)
    return DEFAULT_LEASE


def _epoch(stamp: object) -> float | None:
    try:
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def describe(holder: dict | None, mtime: float | None, at: float | None = None) -> dict:
    """The lease's state: {"held", "holder", "age", "renewed", "stale", "stale_after"}."""
    if holder is None:
        return {"held": False, "holder": None, "age": None, "renewed": None, "stale": False,
                "stale_after": None}  # fmt: skip
    at = time.time() if at is None else at
    stale_after = lease_of(holder)
    # No mtime (the file cannot be read): never stale by itself; `lock release --force` clears it.
    renewed = None if mtime is None else round(max(0.0, at - mtime), 1)
    since = _epoch(holder.get("since"))
    age = round(max(0.0, at - since), 1) if since is not None else renewed
    return {
        "held": True,
        "holder": holder,
        "age": age,
        "renewed": renewed,
        "stale": renewed is not None and renewed > stale_after,
        "stale_after": stale_after,
    }


def _without_token(holder: dict | None) -> dict | None:
    """A holder as the history keeps it: its token is a capability, not a record."""
    return None if holder is None else {k: v for k, v in holder.items() if k != "token"}


def _write_temporary(directory: str, holder: dict) -> str:
    handle, temporary = tempfile.mkstemp(prefix=".deploy.lock.", dir=directory)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(holder, stream, sort_keys=True)
            stream.write("\n")
            stream.flush()
            os.fsync(stream.fileno())
    except BaseException:
        os.unlink(temporary)
        raise
    return temporary


def try_acquire(directory: str, holder: dict) -> bool:
    temporary = _write_temporary(directory, holder)
    try:
        try:
            os.link(temporary, os.path.join(directory, LOCK))
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(temporary)


def take_over(directory: str, holder: dict, expected: dict) -> dict | None:
    """Replace the stale lease ``expected`` by ``holder``, atomically (rename(2) over the lock:
    the name never disappears, so no plain acquire can slip in). None when the lease is no longer
    that stale one (renewed, released or taken by someone else meanwhile)."""
    with guarded(directory):
        current, mtime = read_lock(directory)
        state = describe(current, mtime)
        if current != expected or not state["stale"]:
            return None
        temporary = _write_temporary(directory, holder)
        try:
            os.replace(temporary, os.path.join(directory, LOCK))
        except BaseException:
            os.unlink(temporary)
            raise
        old = {"holder": _without_token(current), "age": state["age"],
               "renewed": state["renewed"], "stale_after": state["stale_after"]}  # fmt: skip
        history_append(
            directory,
            {"action": "lock take-over", "outcome": "taken over", "who": holder.get("who"),
             "command": holder.get("command"), "release": holder.get("release"), **old},
        )  # fmt: skip
        return old


def lock_acquire(directory: str, holder: dict, wait: float = 0.0, take: bool = False) -> dict:
    """{"acquired": true, "holder"} or, once ``wait`` seconds have passed with the lock held,
    {"acquired": false, "holder": <its holder>, "age", "renewed", "stale", "stale_after"}. With
    ``take``, a stale lease is taken over ({"acquired": true, "holder", "took_over"})."""
    lease = holder.get("lease", DEFAULT_LEASE)
    if isinstance(lease, bool) or not isinstance(lease, (int, float)) or not lease > 0:
        raise LedgerError(f"the holder's lease must be a number of seconds above 0, not {lease!r}")
    deadline = time.monotonic() + max(0.0, wait)
    while True:
        # "since" is the moment this attempt writes the holder, just before its link(2): the
        # moment the lock is taken, never the moment the wait began.
        mine = dict(holder, lease=lease, since=now())
        if try_acquire(directory, mine):
            return {"acquired": True, "holder": mine}
        state = describe(*read_lock(directory))
        if not state["held"]:  # released between our link and our read: try again at once
            continue
        if take and state["stale"]:
            old = take_over(directory, mine, state["holder"])
            if old is not None:
                return {"acquired": True, "holder": mine, "took_over": old}
            continue  # the lease changed meanwhile: look again
        if time.monotonic() >= deadline:
            return {"acquired": False, **{k: v for k, v in state.items() if k != "held"}}
        time.sleep(max(0.0, min(1.0, deadline - time.monotonic())))


def lock_renew(directory: str, token: str) -> dict:
    """{"extended": bool, "holder", ...}: the lease whose holder carries ``token`` is renewed (its
    lock file's mtime set to now); a free lock or another holder's is left alone."""
    if not token:
        raise LedgerError("lock renew needs the holder's --token")
    with guarded(directory):
        current, mtime = read_lock(directory)
        if current is None or current.get("token") != token:
            return {"extended": False, **describe(current, mtime)}
        os.utime(os.path.join(directory, LOCK))
        return {"extended": True, **describe(*read_lock(directory))}


def lock_release(directory: str, token: str = "", force: bool = False, who: str = "") -> dict:
    """{"released": bool, "holder", ...}. With ``token``, only the lock whose holder carries it.
    Without (an operator's release): a stale lease, or a live one with ``force``; recorded in the
    history."""
    with guarded(directory):
        current, mtime = read_lock(directory)
        state = describe(current, mtime)
        answer = {k: v for k, v in state.items() if k != "held"}
        if current is None:
            return {"released": False, **answer}
        if token:
            if current.get("token") != token:
                return {"released": False, **answer}
        elif not state["stale"] and not force:
            return {"released": False, "refused": "live", **answer}
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(directory, LOCK))
        if not token:
            history_append(
                directory,
                {"action": "lock release", "outcome": "forced" if force else "released",
                 "forced": force, "who": who or None, "holder": _without_token(current),
                 "age": state["age"], "renewed": state["renewed"], "stale": state["stale"],
                 "stale_after": state["stale_after"]},
            )  # fmt: skip
        return {"released": True, "forced": force and not token, **answer}


def finish(directory: str, record: dict, token: str) -> dict:
    """A rollout's last step, in one call: its record appended to the history, then its lock
    released by its token (never a newer holder's: then released is false)."""
    if not token:
        raise LedgerError("finish releases the lock by its holder's token: give token")
    appended = history_append(directory, record)
    released = lock_release(directory, token)
    return {**appended, "released": released["released"]}


def lock_status(directory: str) -> dict:
    return describe(*read_lock(directory))


def history_append(directory: str, record: dict) -> dict:
    record = dict(record, recorded=now())
    path = os.path.join(directory, HISTORY)
    # O_APPEND: one write(2) of one line; concurrent appends never interleave within a line.
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(descriptor, (json.dumps(record, sort_keys=True) + "\n").encode())
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    return {"appended": True, "record": record}


def history_show(directory: str, limit: int = 0) -> dict:
    path = os.path.join(directory, HISTORY)
    records = []
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    # A torn last line (power loss mid-write) must not hide the rest of the history.
                    records.append({"corrupt": f"{path}:{number}"})
    except FileNotFoundError:
        pass
    if limit:
        records = records[-limit:]
    return {"records": records, "app": app_from_history(records)}


def app_from_history(records: list) -> str | None:
    """The application the newest rollout that was carried out names (a refused attempt, for
    another application or while the lock was held, names one the fleet may not serve)."""
    for record in reversed(records):
        if isinstance(record, dict) and record.get("app") and record.get("outcome") != "refused":
            # A replace (deploy --replace) that did not succeed returned the fleet to the
            # application it was replacing.
            if record.get("replaced") and record.get("outcome") not in ("succeeded", "unchanged"):
                return str(record["replaced"])
            return str(record["app"])
    return None


def _identity(record: dict) -> str:
    """A record as every balancer's copy holds it: all but "recorded" (each host's own clock)."""
    return json.dumps({k: v for k, v in record.items() if k != "recorded"}, sort_keys=True)


def history_merge(directory: str, records: list) -> dict:
    """Append the records (another balancer's history, oldest first) that this history lacks,
    in their order and with their own "recorded" time: a balancer that was away, or is new,
    gets the history it missed. Serialized with the other writers (the guard)."""
    with guarded(directory):
        present = {_identity(r) for r in history_show(directory)["records"]}
        missing = [r for r in records if isinstance(r, dict) and "corrupt" not in r
                   and _identity(r) not in present]  # fmt: skip
        if missing:
            path = os.path.join(directory, HISTORY)
            descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in missing)
                os.write(descriptor, lines.encode())
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
    return {"appended": bool(missing), "merged": len(missing)}


def main() -> int:
    parser = argparse.ArgumentParser(prog="deploykit-ledger", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=DEFAULT_DIR)
    sub = parser.add_subparsers(dest="area", required=True)
    lock = sub.add_parser("lock").add_subparsers(dest="action", required=True)
    acquire = lock.add_parser("acquire")
    acquire.add_argument("--holder", required=True)
    acquire.add_argument("--wait", type=float, default=0.0)
    acquire.add_argument("--take-over", dest="take_over", action="store_true")
    acquire.add_argument("--with-history", dest="with_history", action="store_true")
    acquire.add_argument("--limit", type=int, default=0)
    renew = lock.add_parser("renew")
    renew.add_argument("--token", required=True)
    release = lock.add_parser("release")
    release.add_argument("--token", default="")
    release.add_argument("--force", action="store_true")
    release.add_argument("--who", default="")
    lock.add_parser("status")
    history = sub.add_parser("history").add_subparsers(dest="action", required=True)
    append = history.add_parser("append")
    append.add_argument("--record", required=True)
    show = history.add_parser("show")
    show.add_argument("--limit", type=int, default=0)
    sub.add_parser("call")
    args = parser.parse_args()
    try:
        check_dir(args.dir)
        if args.area == "call":
            request = parse_object(sys.stdin.read(), "the request on stdin")
            answer = run(args.dir, str(request.pop("command", "")), request)
        else:
            answer = run(args.dir, f"{args.area} {args.action}", vars(args))
    except LedgerError as error:
        print(f"deploykit-ledger: {error}", file=sys.stderr)
        return 2
    print(json.dumps(answer, sort_keys=True))
    return 1 if refused(answer) else 0


def refused(answer: dict) -> bool:
    """The lock is held (acquire), not renewed, or not released (another holder's token, or a
    live lease without force); releasing a free lock is not a refusal."""
    return (
        answer.get("acquired") is False
        or answer.get("extended") is False
        or (answer.get("released") is False and answer.get("holder") is not None)
    )


def with_history(answer: dict, directory: str, args: dict) -> dict:
    """A lock asked for ``with_history``: the history's last ``limit`` records too, and the
    application it names, in the same call (a rollout's first step, one round trip instead of
    two): read under the lock when it was taken; when it was not, read all the same (the history
    is only ever appended to), so that a refused attempt is recorded with its application."""
    if args.get("with_history"):
        return {**answer, **history_show(directory, int(args.get("limit") or 0))}
    return answer


def run(directory: str, command: str, args: dict) -> dict:
    """One ledger command with its arguments (the module's and the command line's one path)."""

    def given(name: str, flag: str) -> dict:
        value = args.get(name)
        if isinstance(value, str):
            return parse_object(value, flag)
        if not isinstance(value, dict):
            raise LedgerError(f"{command} needs {name} (a JSON object)")
        return value

    commands = {
        "lock acquire": lambda: with_history(
            lock_acquire(
                directory, given("holder", "--holder"), float(args.get("wait") or 0),
                bool(args.get("take_over")),
            ),
            directory, args,
        ),
        "lock renew": lambda: lock_renew(directory, str(args.get("token") or "")),
        "lock release": lambda: lock_release(
            directory, str(args.get("token") or ""), bool(args.get("force")),
            str(args.get("who") or ""),
        ),
        "lock status": lambda: lock_status(directory),
        "history append": lambda: history_append(directory, given("record", "--record")),
        "history show": lambda: history_show(directory, int(args.get("limit") or 0)),
        "history merge": lambda: history_merge(directory, list(args.get("records") or [])),
        "finish": lambda: finish(
            directory, given("record", "--record"), str(args.get("token") or "")
        ),
    }  # fmt: skip
    if command not in commands:
        raise LedgerError(f"unknown command {command!r}")
    return commands[command]()


if __name__ == "__main__":
    sys.exit(main())
