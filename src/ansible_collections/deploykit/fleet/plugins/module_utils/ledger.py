#!/usr/bin/python3
"""deploykit's deploy ledger on the balancer: the deploy lock and the deploy history (stdlib only).

One deploy at a time per inventory: every deploy and rollback takes the lock on the first balancer
before anything changes and appends a record to the history when it ends, whatever the outcome.

deploykit-ledger [--dir DIR] lock acquire --holder JSON [--wait SECONDS]
    Take the lock: DIR/deploy.lock is created atomically (written under a temporary name, then
    hard-linked to its final name: link(2) fails when the name exists, so two deploys can never
    both win, and a reader never sees a half-written holder). JSON is the holder's record (who,
    from where, which release); "since" is added here, from this host's clock. Prints
    {"acquired": true, "holder": {...}}. When the lock is held, prints {"acquired": false,
    "holder": <the holder's record>, "age": seconds} and exits 1; with --wait, polls until the
    lock is free or SECONDS have passed.
deploykit-ledger [--dir DIR] lock release [--token TOKEN]
    Remove the lock. With --token, only the lock whose holder carries that token (a deploy
    releases its own lock, never a newer one). Prints {"released": bool, "holder": ... or null}.
deploykit-ledger [--dir DIR] lock status
    Prints {"held": bool, "holder": ... or null, "age": seconds or null}.
deploykit-ledger [--dir DIR] history append --record JSON
    Append one record (a JSON object) to DIR/history.jsonl, flushed to disk. "recorded" is added.
deploykit-ledger [--dir DIR] history show [--limit N]
    Prints {"records": [...]}, oldest first (the last N when --limit is given).

Exit codes: 0 done, 1 the lock is held (acquire) or not released (release with a stale token),
2 usage or a corrupt file (named on stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime

DEFAULT_DIR = "/var/lib/deploykit-ledger"
LOCK = "deploy.lock"
HISTORY = "history.jsonl"


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


def read_lock(directory: str) -> tuple[dict | None, float | None]:
    path = os.path.join(directory, LOCK)
    try:
        with open(path, encoding="utf-8") as handle:
            holder = json.load(handle)
        age = time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
        return None, None
    except (OSError, json.JSONDecodeError) as error:
        # A lock we cannot read is still a lock: refusing is safe, `lock release` clears it.
        return {"unreadable": f"{path}: {error}"}, None
    return holder, round(age, 1)


def try_acquire(directory: str, holder: dict) -> bool:
    handle, temporary = tempfile.mkstemp(prefix=".deploy.lock.", dir=directory)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(holder, stream, sort_keys=True)
            stream.write("\n")
            stream.flush()
            os.fsync(stream.fileno())
        try:
            os.link(temporary, os.path.join(directory, LOCK))
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(temporary)


def lock_acquire(directory: str, holder: dict, wait: float = 0.0) -> dict:
    """{"acquired": true, "holder"} or, once ``wait`` seconds have passed with the lock held,
    {"acquired": false, "holder": <its holder>, "age"}."""
    holder = dict(holder, since=now())
    deadline = time.monotonic() + max(0.0, wait)
    while True:
        if try_acquire(directory, holder):
            return {"acquired": True, "holder": holder}
        current, age = read_lock(directory)
        if current is None:  # released between our link and our read: try again at once
            continue
        if time.monotonic() >= deadline:
            return {"acquired": False, "holder": current, "age": age}
        time.sleep(max(0.0, min(1.0, deadline - time.monotonic())))


def lock_release(directory: str, token: str = "") -> dict:
    """{"released": bool, "holder"}; with ``token``, only the lock whose holder carries it."""
    current, _ = read_lock(directory)
    if current is None:
        return {"released": False, "holder": None}
    if token and current.get("token") != token:
        return {"released": False, "holder": current}
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(directory, LOCK))
    return {"released": True, "holder": current}


def lock_status(directory: str) -> dict:
    current, age = read_lock(directory)
    return {"held": current is not None, "holder": current, "age": age}


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
    return {"records": records}


def main() -> int:
    parser = argparse.ArgumentParser(prog="deploykit-ledger", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=DEFAULT_DIR)
    sub = parser.add_subparsers(dest="area", required=True)
    lock = sub.add_parser("lock").add_subparsers(dest="action", required=True)
    acquire = lock.add_parser("acquire")
    acquire.add_argument("--holder", required=True)
    acquire.add_argument("--wait", type=float, default=0.0)
    release = lock.add_parser("release")
    release.add_argument("--token", default="")
    lock.add_parser("status")
    history = sub.add_parser("history").add_subparsers(dest="action", required=True)
    append = history.add_parser("append")
    append.add_argument("--record", required=True)
    show = history.add_parser("show")
    show.add_argument("--limit", type=int, default=0)
    args = parser.parse_args()
    try:
        check_dir(args.dir)
        answer = run(args.dir, f"{args.area} {args.action}", vars(args))
    except LedgerError as error:
        print(f"deploykit-ledger: {error}", file=sys.stderr)
        return 2
    print(json.dumps(answer, sort_keys=True))
    # 1: the lock is held (acquire) or not released (release with another holder's token).
    refused = answer.get("acquired") is False or (
        answer.get("released") is False and answer.get("holder") is not None
    )
    return 1 if refused else 0


def run(directory: str, command: str, args: dict) -> dict:
    """One ledger command with its arguments (the module's and the command line's one path)."""
    if command == "lock acquire":
        holder = args["holder"]
        if isinstance(holder, str):
            holder = parse_object(holder, "--holder")
        return lock_acquire(directory, holder, float(args.get("wait") or 0))
    if command == "lock release":
        return lock_release(directory, str(args.get("token") or ""))
    if command == "lock status":
        return lock_status(directory)
    if command == "history append":
        record = args["record"]
        if isinstance(record, str):
            record = parse_object(record, "--record")
        return history_append(directory, record)
    if command == "history show":
        return history_show(directory, int(args.get("limit") or 0))
    raise LedgerError(f"unknown command {command!r}")


if __name__ == "__main__":
    sys.exit(main())
