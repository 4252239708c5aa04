"""Whether a host still has a role's configuration, so that site.yml can skip converging it.

A role's converge is skipped on a host only when both hold:

- **its inputs are the same** as at its last complete converge there: the fingerprint, a sha256
  over the role's code (every file of the role and of this collection's plugins), the inventory's
  groups, every host's address and this host's variables of the project's prefixes (the
  controller's half, plugins/action/converged.py, works it out; secrets only ever enter the hash);
- **what it made is still there**: every file and directory it declared has the content, mode and
  owner it had then (a directory: each entry under it, recursively), every service it declared
  that was active or enabled then still is, every package it declared is still installed.

A role records that at the end of its converge, after its handlers ran (RECORD_DIR/<role>.json,
root's only). A query that finds anything different removes the record first, so that a converge
which then fails leaves none and the next run converges in full again. What the record cannot see
(a RabbitMQ user deleted through its own API, a row in pg_hba.conf's database) is why
``deploykit provision --full`` (deploykit_converge_full) converges every role whatever the record.

Standard library only: the module on the hosts and the controller's tests import it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

RECORD_DIR = "/var/lib/deploykit-converged"
#: Variables of these prefixes are inputs of a host's configuration: every role's name (the unit
#: tests check that each role directory is here), deploykit's own, nginx's (the static role's).
PREFIXES = (
    "app", "bake", "common", "deploykit", "haproxy", "keepalived", "ledger", "mongodb", "nginx",
    "postgresql", "rabbitmq", "redis", "release", "static", "worker",
)  # fmt: skip
#: Variables that choose how to converge, not what: not inputs.
NOT_INPUTS = frozenset({"deploykit_converge_full"})
_INPUT = re.compile(rf"^({'|'.join(PREFIXES)})_")
#: A record describes at most this many paths (a directory's entries count): a role declares the
#: files it writes and their own directories, never a data directory.
MAX_PATHS = 2000
SKIP_PARTS = frozenset({"__pycache__", ".git"})


class ConvergeProblem(Exception):
    """A record that cannot be read or written, or a declaration that is too large."""


def tree_digest(paths: Iterable[Path], base: Path | None = None) -> str:
    """sha256 over the relative names and contents of every file under ``paths`` (files or
    directories, links followed), in name order. Names are relative to ``base`` (else to each
    path's parent), so that the same code in another checkout has the same digest."""
    digest = hashlib.sha256()
    for top in paths:
        root = base if base is not None else top.parent
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for path in files:
            if SKIP_PARTS.intersection(path.parts):
                continue
            digest.update(str(path.relative_to(root)).encode() + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def is_input(name: str) -> bool:
    """Whether variable ``name`` is an input of a host's configuration."""
    return bool(_INPUT.match(name)) and name not in NOT_INPUTS


def fingerprint(inputs: Mapping[str, Any]) -> str:
    """sha256 of ``inputs`` as canonical JSON (values JSON cannot hold are written as strings)."""
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _describe(path: str, info: os.stat_result) -> list[Any]:
    common = [stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid]
    if stat.S_ISLNK(info.st_mode):
        return ["link", os.readlink(path)]
    if stat.S_ISDIR(info.st_mode):
        return ["dir", *common]
    if stat.S_ISREG(info.st_mode):
        with open(path, "rb") as handle:
            return ["file", hashlib.sha256(handle.read()).hexdigest(), *common]
    return ["other", *common]


def observe_paths(paths: Sequence[str]) -> dict[str, Any]:
    """{path: description} of each path (None: absent), a directory's entries included."""
    seen: dict[str, Any] = {}
    pending = list(paths)
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            seen[path] = None
            continue
        except OSError as error:
            seen[path] = ["error", error.strerror]
            continue
        seen[path] = _describe(path, info)
        if stat.S_ISDIR(info.st_mode):
            pending.extend(
                os.path.join(path, name)
                for name in sorted(os.listdir(path))
                if name not in SKIP_PARTS
            )
        if len(seen) > MAX_PATHS:
            raise ConvergeProblem(
                f"more than {MAX_PATHS} paths under {', '.join(paths)}: a record describes the "
                "files a role writes, not a data directory"
            )
    return dict(sorted(seen.items()))


def _run(argv: Sequence[str]) -> list[str]:
    """The lines a read-only query prints (its exit status says nothing we need: systemctl
    is-active exits 3 when any unit is inactive, dpkg-query 1 when a package is unknown)."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ConvergeProblem(f"{argv[0]}: {error}") from None
    return done.stdout.splitlines()


def observe_services(units: Sequence[str]) -> dict[str, list[str]]:
    """{unit: [active state, enabled state]} (systemctl's words: active, inactive, enabled, ...)."""
    if not units:
        return {}
    active = _run(["systemctl", "is-active", "--", *units])
    enabled = _run(["systemctl", "is-enabled", "--", *units])
    padded = lambda lines: lines + [""] * (len(units) - len(lines))  # noqa: E731
    return {
        unit: [state, on]
        for unit, state, on in zip(units, padded(active), padded(enabled), strict=False)
    }


def observe_packages(names: Sequence[str]) -> list[str]:
    """The packages of ``names`` that dpkg has installed, in name order."""
    if not names:
        return []
    lines = _run(["dpkg-query", "--show", "--showformat=${Package} ${db:Status-Abbrev}\\n", *names])
    installed = {
        line.split()[0] for line in lines if len(line.split()) > 1 and line.split()[1] == "ii"
    }
    return sorted(name for name in names if name in installed)


def observe(
    paths: Sequence[str], services: Sequence[str], packages: Sequence[str]
) -> dict[str, Any]:
    return {
        "paths": observe_paths(paths),
        "services": observe_services(services),
        "packages": observe_packages(packages),
    }


def _kept(state: str) -> bool:
    """Whether a unit's recorded state must still hold: it ran, or it starts at boot."""
    return state in ("active", "enabled", "enabled-runtime", "static", "alias")


def difference(record: Mapping[str, Any] | None, wanted: str) -> str | None:
    """Why the host no longer has the configuration ``record`` describes for the fingerprint
    ``wanted`` (the first difference found, in a few words), or None: it still has it."""
    if not record:
        return "no record of a complete converge"
    if record.get("fingerprint") != wanted:
        return "its inputs changed (the role's code, the inventory or this host's variables)"
    return (
        _paths_difference(record.get("paths") or {})
        or _services_difference(record.get("services") or {})
        or _packages_difference(record.get("packages") or [])
    )


def _paths_difference(recorded: Mapping[str, Any]) -> str | None:
    now = observe_paths(sorted(recorded))
    changed = next((path for path, then in recorded.items() if now.get(path) != then), None)
    return None if changed is None else f"{changed} changed since the last converge"


def _services_difference(recorded: Mapping[str, Sequence[str]]) -> str | None:
    now = observe_services(sorted(recorded))
    for unit, (state, on) in recorded.items():
        current_state, current_on = now.get(unit, ["", ""])
        if _kept(state) and current_state != state:
            return f"{unit} is {current_state or 'unknown'} (it was {state})"
        if _kept(on) and current_on != on:
            return f"{unit} is {current_on or 'unknown'} at boot (it was {on})"
    return None


def _packages_difference(recorded: Sequence[str]) -> str | None:
    missing = sorted(set(recorded) - set(observe_packages(recorded)))
    return f"package {', '.join(missing)} is no longer installed" if missing else None


def record_path(role: str, directory: str = RECORD_DIR) -> Path:
    if not role or "/" in role or role.startswith("."):
        raise ConvergeProblem(f"role {role!r}: not a role's name")
    return Path(directory) / f"{role}.json"


def read_record(role: str, directory: str = RECORD_DIR) -> dict[str, Any] | None:
    path = record_path(role, directory)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # unreadable: as if there were none (the role converges in full)
    return data if isinstance(data, dict) else None


def remove_record(role: str, directory: str = RECORD_DIR) -> bool:
    try:
        record_path(role, directory).unlink()
    except FileNotFoundError:
        return False
    return True


def write_record(role: str, record: Mapping[str, Any], directory: str = RECORD_DIR) -> bool:
    """Write ``record`` (root's only, atomically); False when the same record was there."""
    path = record_path(role, directory)
    text = json.dumps(record, sort_keys=True, indent=1) + "\n"
    try:
        if path.read_text() == text:
            return False
    except (OSError, ValueError):
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(scratch, path)
    return True
