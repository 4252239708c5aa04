#!/usr/bin/python3
"""deploykit's release logic, one implementation everywhere (Python standard library only):

- the collection's modules import it on the nodes (stage, activate, survey);
- deploykit's own Python imports it on the controller (``deploykit build``/``verify`` check an
  artifact with :func:`verify_artifact`);
- the release role installs this same file on the nodes as /usr/local/libexec/deploykit-release,
  the command below (the systemd units start the application through its ``exec``).

deploykit-release verify RELEASE_DIR [--checksum SHA256]
    Check an unpacked release against its manifest.json: the manifest's own checksum (and, with
    --checksum, that it is the manifest of the artifact being deployed), the sha256 of every file
    it lists, and that nothing else was added (venv/ and the .deploykit-* stamps excepted).
    Prints a JSON summary; exits 1 naming every file that differs (on stderr, one per line).

deploykit-release prune RELEASES_DIR --keep N [--current LINK] [--protect ID ...]
                        [--artifacts DIR]
    Remove the oldest releases beyond the newest N, never the live one (the target of LINK,
    read from the link itself, not from modification times) nor a protected one. The order is
    the install time each release's stamp records. With --artifacts, the uploaded artifact
    (<id>.tar.gz) of every removed release goes too. Prints JSON {"removed", "kept", "live"}.

deploykit-release stamp RELEASE_DIR
    Record that the release was installed on this node, and when, in
    RELEASE_DIR/.deploykit-release.json: the order prune reads. Does nothing if the stamp exists.

deploykit-release running UNIT [--file PATH ...]
    What the unit's main process runs: the release (DEPLOYKIT_RELEASE_ID in its environment,
    set by exec when it started), and which of the given files (its settings, its unit) changed
    since it started. Prints JSON {"pid": N, "release": ID or null, "changed_since": [PATH ...]};
    pid 0 when it is not running. Callers restart a unit that does not run the live release
    with the files as they are: no state is kept between runs, and two roles sharing a host
    (app and worker) each see what their own process needs.

deploykit-release survey APP_ROOT [--unit UNIT ...] [--health-url URL]
    What this node runs, for `deploykit status` and the rollout: the release current points to
    and its manifest checksum, the releases kept (oldest first, by install time), and per UNIT
    its state (systemctl is-active), main pid and the release its process runs (as `running`).
    With --health-url, the release the service itself reports there ({"release": ...} in a JSON
    answer) and the HTTP status. Prints one JSON object; exits 0 whatever it finds.

deploykit-release exec [--release ID] APP_ROOT PROGRAM [ARGS ...]
    Resolve APP_ROOT/current ONCE (with --release, take the release ID instead: a unit per
    release, such as the worker's <app>-worker@ID.service, passes its instance), then run
    PROGRAM from that release's virtualenv (<release>/venv/bin/PROGRAM) in the release
    directory, with DEPLOYKIT_RELEASE_ID set to the release's id. An argument @wsgi@ or
    @worker@ is replaced by that entry of the release's contract (its manifest.json). systemd
    units start the application through it: the process is pinned to the release that was live
    when it started (or that its instance names), runs that release's entry point and reports
    that release's id, whatever happens to the link later; the unit itself holds nothing of any
    release. A switch takes effect at the next (re)start.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Mapping
from typing import Any

MANIFEST = "manifest.json"
STAMP = ".deploykit-release.json"
VENV = "venv"
#: Written last in venv/: a virtualenv without it is built again from scratch.
VENV_MARKER = ".deploykit-complete"
NAME_RE = re.compile(r"[a-z][a-z0-9-]*\Z")
#: A release id names a directory on the nodes (releases/<id>/).
RELEASE_ID_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,127}\Z")
HEALTH_PATH_RE = re.compile(r"/[^\s?#]*\Z")
#: Modes no member of a release may carry: set-user-ID, set-group-ID, sticky, writable by others.
FORBIDDEN_MODE_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | stat.S_IWOTH
GZIP_MAGIC = b"\x1f\x8b"
REBUILD = "rebuild the artifact with deploykit build; never edit one"
EX_CONFIG = 78  # sysexits: a configuration error (no live release to run)
# exec's arguments replaced by an entry of the live release's contract.
PLACEHOLDERS = {"@wsgi@": "wsgi", "@worker@": "worker"}


def files_checksum(files: dict) -> str:
    """The manifest checksum: sha256 of the canonical JSON of {path: sha256}, as deploykit build."""
    canonical = json.dumps(dict(files), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unsafe(name: str) -> bool:
    """A path that would leave the release (absolute, '..') or is not a plain relative path."""
    parts = name.rstrip("/").split("/")
    return name.startswith("/") or ".." in parts or "" in parts or name in ("", ".")


class ReleaseProblem(Exception):
    """What is wrong with an artifact or an unpacked release, naming the file; ``hint`` says
    what to do."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


def check_manifest(manifest: Any, where: str) -> dict:
    """The manifest, if it is one deploykit build wrote: a files list its checksum matches, and
    the fields a deploy reads (the checksum covers only the files list, so these one by one)."""
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise ReleaseProblem(f"{where}: no files list: not a deploykit manifest")
    if manifest.get("checksum") != files_checksum(files):
        raise ReleaseProblem(
            f"{where}: its checksum does not match its files list "
            "(the manifest was edited after the build)"
        )
    for key in ("name", "release_id", "requirement", "contract"):
        if key not in manifest:
            raise ReleaseProblem(
                f"{where}: no {key!r}: not a manifest deploykit build wrote", REBUILD
            )
    name, release_id = manifest["name"], manifest["release_id"]
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ReleaseProblem(
            f"{where}: name {name!r} is not an application name (lowercase letters, digits and "
            "'-', starting with a letter)",
            REBUILD,
        )
    if not isinstance(release_id, str) or not RELEASE_ID_RE.match(release_id):
        raise ReleaseProblem(
            f"{where}: release_id {release_id!r} is not a release id (letters, digits, '.', '+', "
            "'_' and '-', starting with a letter or digit): it names the release directory on "
            "the nodes",
            REBUILD,
        )
    contract = manifest["contract"]
    health_path = contract.get("health_path") if isinstance(contract, dict) else None
    if not isinstance(health_path, str) or not HEALTH_PATH_RE.match(health_path):
        raise ReleaseProblem(
            f"{where}: contract.health_path {health_path!r} is not a URL path starting with /: "
            "the rollout asks every clone for it",
            REBUILD,
        )
    return manifest


def _member_problem(artifact: str, index: int, member: tarfile.TarInfo) -> str | None:
    name = member.name
    if unsafe(name):
        return (
            f"{artifact}: {name!r}: a path outside the release (absolute, or with '..'); every "
            "path in a release is relative and stays inside it"
        )
    if index == 0 and not (name == MANIFEST and member.isfile()):
        # The manifest comes first so that a node can read it before unpacking anything.
        return (
            f"{artifact}: its first member is {name!r}, not {MANIFEST}: deploykit build writes "
            "the manifest first"
        )
    if not (member.isfile() or member.isdir()):
        return f"{artifact}: {name}: not a regular file; a release holds only files and directories"
    if member.mode & FORBIDDEN_MODE_BITS:
        return (
            f"{artifact}: {name}: mode {member.mode:04o} (set-user-ID, set-group-ID, sticky or "
            "writable by others): a release never carries such modes"
        )
    return None


def _read_artifact(  # noqa: PLR0912, PLR0915 (one pass, each member's cases in order)
    artifact: str, extract_to: str | None
) -> tuple[list[str], dict, bytes | None]:
    """One pass over the archive: file names in archive order, their sha256 and manifest.json.
    With ``extract_to``, every member is written there as it is read (files 0644, or 0755 when
    executable by their owner; directories 0755; owned by the caller): nothing of the archive's
    owners or modes is kept."""
    order: list[str] = []
    hashes: dict[str, str] = {}
    manifest = None
    where = "at its start"
    try:
        with tarfile.open(artifact, "r:gz") as tar:
            for index, member in enumerate(tar):
                name = member.name
                where = f"in {name}"
                problem = _member_problem(artifact, index, member)
                if problem:
                    raise ReleaseProblem(problem, REBUILD)
                target = os.path.join(extract_to, name) if extract_to else None
                if member.isdir():
                    if target:
                        os.makedirs(target, mode=0o755, exist_ok=True)
                    where = f"after {name}"
                    continue
                if name in hashes:
                    raise ReleaseProblem(f"{artifact}: {name}: twice in the archive", REBUILD)
                handle = tar.extractfile(member)
                if handle is None:  # a regular file always has one
                    raise ReleaseProblem(f"{artifact}: {name}: unreadable")
                digest = hashlib.sha256()
                kept: list[bytes] = []
                out = None
                if target:
                    os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
                    mode = 0o755 if member.mode & stat.S_IXUSR else 0o644
                    out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
                try:
                    while block := handle.read(1 << 20):
                        digest.update(block)
                        if name == MANIFEST:
                            kept.append(block)
                        if out is not None:
                            os.write(out, block)
                finally:
                    if out is not None:
                        os.close(out)
                if name == MANIFEST:
                    manifest = b"".join(kept)
                hashes[name] = digest.hexdigest()
                order.append(name)
                where = f"after {name}"
            # tarfile stops at the end-of-archive blocks; read the rest so that gzip checks its
            # length and CRC (a copy cut short in the padding is caught too).
            stream = tar.fileobj
            while stream is not None and stream.read(1 << 20):
                pass
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise ReleaseProblem(
            f"{artifact}: the archive is truncated or corrupt ({where}): {error}",
            "copy it again, or rebuild it with deploykit build",
        ) from None
    return order, hashes, manifest


def verify_artifact(artifact: str, extract_to: str | None = None) -> dict:
    """Check a release artifact against its manifest and return the manifest: a .tar.gz whose
    first member is manifest.json, every path inside the release, only files and directories with
    plain modes, a consistent manifest, every file's sha256, nothing missing or added. With
    ``extract_to`` (an empty directory), the release is unpacked there in the same pass (the
    caller removes it when this raises). Raises ReleaseProblem naming the first bad file."""
    if not os.path.isfile(artifact):
        raise ReleaseProblem(
            f"{artifact}: no such file: give the path of a built release (.tar.gz)"
        )
    with open(artifact, "rb") as handle:
        start = handle.read(len(GZIP_MAGIC))
    if start != GZIP_MAGIC:
        what = (
            "an empty file, not a release"
            if not start
            else ("not a gzip-compressed tar archive (.tar.gz), so not a release")
        )
        raise ReleaseProblem(
            f"{artifact}: {what}: give the .tar.gz that deploykit build wrote",
            "copy it again, or rebuild it with deploykit build",
        )
    order, hashes, raw = _read_artifact(artifact, extract_to)
    if raw is None:
        raise ReleaseProblem(f"{artifact}: no {MANIFEST}: not a deploykit release artifact")
    try:
        manifest = json.loads(raw)
    except ValueError as error:
        raise ReleaseProblem(f"{artifact}: {MANIFEST}: not valid JSON: {error}") from None
    files = check_manifest(manifest, f"{artifact}: {MANIFEST}")["files"]
    for name in order:
        if name == MANIFEST:
            continue
        expected = files.get(name)
        if expected is None:
            raise ReleaseProblem(f"{artifact}: {name}: not in {MANIFEST} (added after the build)")
        if expected != hashes[name]:
            raise ReleaseProblem(
                f"{artifact}: {name}: sha256 differs from {MANIFEST} (changed after the build)",
                REBUILD,
            )
    for name in files:
        if name not in hashes:
            raise ReleaseProblem(
                f"{artifact}: {name}: listed in {MANIFEST} but missing from the archive"
            )
    return manifest


def load_manifest(release: str) -> dict:
    path = os.path.join(release, MANIFEST)
    try:
        with open(path, "rb") as handle:
            manifest = json.load(handle)
    except FileNotFoundError:
        raise ReleaseProblem(
            f"{path}: missing: {release} is not an unpacked deploykit release"
        ) from None
    except (OSError, ValueError) as error:
        raise ReleaseProblem(f"{path}: cannot be read as JSON: {error}") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise ReleaseProblem(f"{path}: no files list: not a deploykit manifest")
    return manifest


def verify_tree(  # noqa: PLR0912 (every way a file can differ, named one by one)
    release: str, checksum: str | None = None
) -> tuple[dict, list[str]]:
    """Check an unpacked release against its manifest.json: the manifest's own checksum (and,
    with ``checksum``, that it is the artifact's), the sha256 of every file it lists, and that
    nothing else was added (venv/ and the .deploykit-* stamps excepted). Returns the manifest and
    the problems (empty when it matches), each naming a file."""
    release = os.path.abspath(release)
    if not os.path.isdir(release):
        return {}, [f"{release}: no such directory"]
    manifest = load_manifest(release)
    files = manifest["files"]
    problems: list[str] = []
    if manifest.get("checksum") != files_checksum(files):
        problems.append(
            f"{MANIFEST}: its checksum does not match its files list (the manifest was edited)"
        )
    if checksum and manifest.get("checksum") != checksum:
        problems.append(
            f"{MANIFEST}: checksum {str(manifest.get('checksum'))[:12]} is not the artifact's "
            f"({checksum[:12]}): this directory holds another build of the release"
        )
    for name in sorted(files):
        if unsafe(name) or name == MANIFEST:
            problems.append(f"{name}: an unsafe path in {MANIFEST}")
            continue
        path = os.path.join(release, name)
        if os.path.islink(path) or (os.path.exists(path) and not os.path.isfile(path)):
            problems.append(f"{name}: not a regular file")
        elif not os.path.exists(path):
            problems.append(f"{name}: missing (listed in {MANIFEST})")
        elif sha256_file(path) != files[name]:
            problems.append(f"{name}: sha256 differs from {MANIFEST} (changed after the build)")
        elif os.lstat(path).st_mode & FORBIDDEN_MODE_BITS:
            problems.append(
                f"{name}: mode {os.lstat(path).st_mode & 0o7777:04o} (changed after the build)"
            )
    for directory, dirnames, walked in os.walk(release):
        relative_dir = os.path.relpath(directory, release)
        filenames = walked
        if relative_dir == ".":
            dirnames[:] = [d for d in dirnames if d != VENV]
            filenames = [f for f in walked if f != MANIFEST and not f.startswith(".deploykit-")]
        for name in sorted(
            filenames + [d for d in dirnames if os.path.islink(os.path.join(directory, d))]
        ):
            relative = os.path.normpath(os.path.join(relative_dir, name))
            if relative not in files:
                problems.append(f"{relative}: not in {MANIFEST} (added after the build)")
    return manifest, [f"{release}/{problem}" for problem in problems]


def switch_current(app_root: str, release_id: str) -> tuple[str, bool]:
    """current → releases/<release_id>, atomically; (the release before, whether it changed)."""
    releases = os.path.join(app_root, "releases")
    if not os.path.isdir(os.path.join(releases, release_id)):
        raise ValueError(
            f"{releases}/{release_id} is not on this node: stage the release first, or choose "
            "a release the node keeps (deploykit status lists them)"
        )
    link = os.path.join(app_root, "current")
    if os.path.lexists(link) and not os.path.islink(link):
        raise ValueError(f"{link} exists and is not a symbolic link: move it away")
    previous = live_release(link, releases) or ""
    if previous == release_id and os.readlink(link) == f"releases/{release_id}":
        return previous, False
    temporary = os.path.join(app_root, ".current.switching")
    if os.path.lexists(temporary):
        os.unlink(temporary)
    os.symlink(f"releases/{release_id}", temporary)
    os.rename(temporary, link)
    return previous, True


def switch_link(link: str, target: str) -> bool:
    """The symbolic link ``link`` → ``target``, replaced atomically (a new link renamed over the
    old); whether it changed. Its directory is made (0755) when missing."""
    if os.path.lexists(link) and not os.path.islink(link):
        raise ValueError(f"{link} exists and is not a symbolic link: move it away")
    if os.path.islink(link) and os.readlink(link) == target:
        return False
    os.makedirs(os.path.dirname(link), mode=0o755, exist_ok=True)
    temporary = f"{link}.switching"
    if os.path.lexists(temporary):
        os.unlink(temporary)
    os.symlink(target, temporary)
    os.rename(temporary, link)
    return True


def cmd_verify(args: argparse.Namespace) -> int:
    try:
        manifest, problems = verify_tree(args.release_dir, args.checksum)
    except ReleaseProblem as error:
        print(error, file=sys.stderr)
        return 1
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "release_id": manifest.get("release_id"),
                "checksum": manifest.get("checksum"),
                "files": len(manifest["files"]),
                "verified": True,
            }
        )
    )
    return 0


def live_release(link: str | None, releases: str) -> str | None:
    """The id the link points at, read from the link itself (relative or absolute target)."""
    if not link or not os.path.islink(link):
        return None
    target = os.path.realpath(link)
    if os.path.dirname(target) != os.path.realpath(releases):
        return None
    return os.path.basename(target)


def installed_at(release: str) -> float:
    try:
        with open(os.path.join(release, STAMP), "rb") as handle:
            return float(json.load(handle)["installed_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0  # never completed: the first to go


def kept_releases(releases: str) -> list[str]:
    """The releases kept in ``releases``, oldest first (by install stamp)."""
    try:
        names = [
            name
            for name in os.listdir(releases)
            if not name.startswith(".")
            and os.path.isdir(os.path.join(releases, name))
            and not os.path.islink(os.path.join(releases, name))
        ]
    except OSError:
        names = []
    return sorted(names, key=lambda name: (installed_at(os.path.join(releases, name)), name))


def prune(
    releases: str,
    keep: int,
    current: str | None = None,
    protect: tuple[str, ...] | list[str] = (),
    artifacts: str | None = None,
    *,
    remove: Callable[[str], object] = shutil.rmtree,
) -> dict:
    """Remove the oldest releases beyond the newest ``keep``, never the live one (the target of
    ``current``, read from the link) nor a protected one; with ``artifacts``, their uploaded
    <id>.tar.gz too. Returns {"removed", "kept", "live"}."""
    releases = os.path.abspath(releases)
    if keep < 1:
        raise ReleaseProblem("--keep must be at least 1")
    live = live_release(current, releases)
    protected = set(protect) | ({live} if live else set())
    newest_first = list(reversed(kept_releases(releases)))
    kept = set(newest_first[:keep]) | (protected & set(newest_first))
    removed = [name for name in newest_first if name not in kept]
    for name in removed:
        remove(os.path.join(releases, name))
    if artifacts and os.path.isdir(artifacts):
        for name in sorted(os.listdir(artifacts)):
            if name.endswith(".tar.gz") and name[: -len(".tar.gz")] in removed:
                os.unlink(os.path.join(artifacts, name))
    return {"removed": removed, "kept": [n for n in newest_first if n in kept], "live": live}


def cmd_prune(args: argparse.Namespace) -> int:
    try:
        answer = prune(args.releases_dir, args.keep, args.current, args.protect, args.artifacts)
    except ReleaseProblem as error:
        raise SystemExit(str(error)) from None
    print(json.dumps(answer))
    return 0


def stamp(release: str) -> bool:
    """Record that the release was installed on this node, and when (the order prune follows).
    False when the stamp was there already."""
    release = os.path.abspath(release)
    path = os.path.join(release, STAMP)
    if os.path.exists(path):
        return False
    record: dict[str, Any] = {"release_id": os.path.basename(release), "installed_at": time.time()}
    if os.path.exists(os.path.join(release, MANIFEST)):
        record["checksum"] = load_manifest(release).get("checksum")
    partial = path + ".partial"
    with open(partial, "w", encoding="utf-8") as handle:
        json.dump(record, handle)
        handle.write("\n")
    os.chmod(partial, 0o644)
    os.replace(partial, path)
    return True


def cmd_stamp(args: argparse.Namespace) -> int:
    print(json.dumps({"changed": stamp(args.release_dir)}))
    return 0


def systemctl_show(unit: str, *properties: str) -> dict[str, str]:
    shown = subprocess.run(
        ["systemctl", "show", *(f"--property={p}" for p in properties), unit],
        capture_output=True,
        text=True,
        check=False,
    )
    if shown.returncode != 0:
        return {}
    return dict(line.split("=", 1) for line in shown.stdout.splitlines() if "=" in line)


def process_release(pid: int) -> str | None:
    """DEPLOYKIT_RELEASE_ID in the environment of a process (set by exec when it started)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            for entry in handle.read().split(b"\0"):
                if entry.startswith(b"DEPLOYKIT_RELEASE_ID="):
                    return entry.split(b"=", 1)[1].decode(errors="replace")
    except OSError:
        pass
    return None


def running_releases() -> set[str]:
    """The releases processes on this node run (DEPLOYKIT_RELEASE_ID in their environment): an
    old release's worker still finishing its jobs runs one that current no longer points to, and
    prune must not remove it from under it."""
    found = {process_release(int(pid)) for pid in os.listdir("/proc") if pid.isdigit()}
    return {release for release in found if release}


def running(unit: str, files: list[str] | tuple[str, ...] = ()) -> dict:
    """What the unit's main process runs: {"pid" (0 when not running), "release", "active",
    "changed_since": which of ``files`` changed since it started}."""
    properties = systemctl_show(unit, "MainPID", "ActiveState", "ExecMainStartTimestampMonotonic")
    pid = int(properties.get("MainPID") or 0)
    changed: list[str] = []
    if pid:
        # The start time on the realtime clock, from systemd's monotonic record (microseconds).
        started = (
            time.time()
            - time.monotonic()
            + int(properties.get("ExecMainStartTimestampMonotonic") or 0) / 1e6
        )
        for path in files:
            try:
                if os.stat(path).st_mtime > started:
                    changed.append(path)
            except OSError:
                changed.append(path)
    return {
        "pid": pid,
        "release": process_release(pid) if pid else None,
        "active": properties.get("ActiveState") or "unknown",
        "changed_since": changed,
    }


def cmd_running(args: argparse.Namespace) -> int:
    answer = running(args.unit, args.file)
    print(json.dumps({k: answer[k] for k in ("pid", "release", "changed_since")}))
    return 0


# A unit per release: a systemd template (the worker role's <app>-worker@.service) whose instance
# is the release id, so that the new release's process starts and answers before the old one's
# graceful stop. '+' is the one character a release id may hold that a unit name may not: it is
# escaped as systemd-escape does; the unit passes the instance as it is (%i) and exec reads it back.
TEMPLATE_SUFFIX = "@.service"


def is_template(unit: str) -> bool:
    return unit.endswith(TEMPLATE_SUFFIX)


def release_instance(release_id: str) -> str:
    return release_id.replace("+", "\\x2b")


def release_of_instance(instance: str) -> str:
    return instance.replace("\\x2b", "+")


def instance_unit(template: str, release_id: str) -> str:
    """``shop-worker@.service``, ``1.2.0-ab12`` → ``shop-worker@1.2.0-ab12.service``."""
    return f"{template.removesuffix(TEMPLATE_SUFFIX)}@{release_instance(release_id)}.service"


#: Where the app and worker roles install their units, and the command every one of them runs.
UNIT_DIR = "/etc/systemd/system"
UNIT_SUFFIXES = ("-web.service", "-worker.service", "-worker@.service")
HELPER_EXEC = "/usr/local/libexec/deploykit-release exec "


def instances(template: str, unit_dir: str = UNIT_DIR) -> list[str]:
    """The instances of ``template`` systemd knows (running, stopping, failed) or would start at
    boot (enabled), sorted."""
    prefix = template.removesuffix(TEMPLATE_SUFFIX) + "@"
    try:
        shown = subprocess.run(
            ["systemctl", "list-units", "--all", "--output=json", f"{prefix}*.service"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        listed = json.loads(shown.stdout or "[]")
    except (OSError, ValueError):  # no systemd here, or an answer that is not JSON
        listed = []
    names = {
        str(u.get("unit")) for u in listed if isinstance(u, dict) and u.get("load") != "not-found"
    }
    for wants in glob.glob(os.path.join(unit_dir, "*.wants", f"{glob.escape(prefix)}*.service")):
        names.add(os.path.basename(wants))
    return sorted(n for n in names if n.startswith(prefix) and n != template)


def enabled(unit: str) -> bool:
    return systemctl_show(unit, "UnitFileState").get("UnitFileState") == "enabled"


def unit_state(unit: str, unit_dir: str = UNIT_DIR) -> dict:
    """{"active", "pid", "release"} of ``unit``; of a template, its instance that serves (the
    enabled one, else the one running), with ``instance`` its name, ``enabled`` whether it is
    (when it is not, no instance is) and ``others`` the other instances' states (an old
    release's worker still finishing its jobs)."""
    if not is_template(unit):
        answer = running(unit)
        return {"active": answer["active"], "pid": answer["pid"], "release": answer["release"]}
    states = {}
    for name in instances(unit, unit_dir):
        shown = systemctl_show(name, "ActiveState", "UnitFileState")
        states[name] = (
            shown.get("ActiveState") or "unknown",
            shown.get("UnitFileState") == "enabled",
        )
    ranked = sorted(
        states,
        key=lambda n: (not states[n][1], states[n][0] not in ("active", "activating", "reloading")),
    )
    if not ranked:
        return {
            "active": "inactive", "pid": 0, "release": None, "instance": None, "enabled": False,
            "others": {},
        }  # fmt: skip
    answer = running(ranked[0])
    return {
        "active": answer["active"],
        "pid": answer["pid"],
        "release": answer["release"],
        "instance": ranked[0],
        "enabled": states[ranked[0]][1],
        "others": {n: states[n][0] for n in ranked[1:]},
    }


def deploykit_apps(unit_dir: str = UNIT_DIR) -> dict:
    """Every application deploykit installed on this node, from its units (the app role's web
    unit, the worker role's worker unit: both run ``deploykit-release exec``):
    {app: {unit: {"active", "enabled"}}}. A clone serves the apps whose units are active or
    enabled (a unit in a restart loop is enabled and activating)."""
    apps: dict[str, dict] = {}
    try:
        names = sorted(os.listdir(unit_dir))
    except OSError:
        return apps
    for name in names:
        suffix = next((s for s in UNIT_SUFFIXES if name.endswith(s)), None)
        if suffix is None:
            continue
        try:
            with open(os.path.join(unit_dir, name), encoding="utf-8") as handle:
                if HELPER_EXEC not in handle.read(65536):
                    continue
        except OSError:
            continue
        if is_template(name):
            # Its serving instance: the enabled one when there is one (unit_state's ranking).
            state = unit_state(name, unit_dir)
            shown = {
                "ActiveState": state["active"],
                "UnitFileState": "enabled" if state["enabled"] else "disabled",
            }
        else:
            shown = systemctl_show(name, "ActiveState", "UnitFileState")
        apps.setdefault(name[: -len(suffix)], {})[name] = {
            "active": shown.get("ActiveState") or "unknown",
            "enabled": shown.get("UnitFileState") or "unknown",
        }
    return apps


def serving(units: dict) -> bool:
    """Whether units of :func:`deploykit_apps` serve: one runs, starts or is enabled."""
    return any(
        u.get("active") in ("active", "activating", "reloading") or u.get("enabled") == "enabled"
        for u in units.values()
    )


def health(url: str, timeout: float = 5.0) -> dict:
    """One request to a health URL: {"status", "release" (its JSON's), "error"?, "body"}."""
    # Straight to the node's own address: no proxy of the environment takes part.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            status, body = response.status, response.read(65536)
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read(65536)
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        return {"status": None, "release": None, "error": str(reason)[:200]}
    try:
        release = json.loads(body).get("release")
    except (ValueError, AttributeError):
        release = None
    return {"status": status, "release": release, "body": body[:300].decode(errors="replace")}


def survey(
    app_root: str, units: list[str] | tuple[str, ...] = (), health_url: str | None = None
) -> dict:
    """What this node runs: the release current points to and its manifest checksum, the
    releases kept (oldest first), each unit's state and the release its process runs, and with
    ``health_url`` what the service itself reports there."""
    root = os.path.abspath(app_root)
    releases = os.path.join(root, "releases")
    live = live_release(os.path.join(root, "current"), releases)
    checksum = None
    if live is not None:
        try:
            checksum = load_manifest(os.path.join(releases, live)).get("checksum")
        except ReleaseProblem:
            checksum = None
    report: dict[str, Any] = {
        "current": live,
        "checksum": checksum,
        "releases": kept_releases(releases),
        "units": {unit: unit_state(unit) for unit in units},
    }
    if health_url:
        answer = health(health_url)
        answer.pop("body", None)
        report["health"] = answer
    return report


def cmd_survey(args: argparse.Namespace) -> int:
    print(json.dumps(survey(args.app_root, args.unit, args.health_url)))
    return 0


def cmd_exec(app_root: str, name: str, arguments: list[str], release_id: str | None = None) -> int:
    root = os.path.abspath(app_root)
    link = os.path.join(root, "current")
    releases = os.path.realpath(os.path.join(root, "releases"))
    if release_id is not None:
        # A unit per release (the worker's): the instance names the release, current does not.
        release_id = release_of_instance(release_id)
        release = os.path.join(releases, release_id)
        if not RELEASE_ID_RE.match(release_id) or not os.path.isdir(release):
            print(
                f"deploykit-release exec: release {release_id!r} is not staged in {releases}",
                file=sys.stderr,
            )
            return EX_CONFIG
    else:
        release = os.path.realpath(link)
        if (
            not os.path.islink(link)
            or os.path.dirname(release) != releases
            or not os.path.isdir(release)
        ):
            print(
                f"deploykit-release exec: {link} does not point to a release in {releases}",
                file=sys.stderr,
            )
            return EX_CONFIG
    program = os.path.join(release, VENV, "bin", name)
    if "/" in name or not os.access(program, os.X_OK):
        print(
            f"deploykit-release exec: {program}: no such program in the release's virtualenv",
            file=sys.stderr,
        )
        return EX_CONFIG
    if any(argument in PLACEHOLDERS for argument in arguments):
        try:
            contract = load_manifest(release).get("contract") or {}
        except ReleaseProblem as error:
            print(f"deploykit-release exec: {error}", file=sys.stderr)
            return EX_CONFIG
        resolved = []
        for argument in arguments:
            if argument in PLACEHOLDERS:
                value = contract.get(PLACEHOLDERS[argument])
                if not isinstance(value, str) or not value:
                    print(
                        f"deploykit-release exec: release {os.path.basename(release)} declares no "
                        f"{PLACEHOLDERS[argument]} in its contract",
                        file=sys.stderr,
                    )
                    return EX_CONFIG
                resolved.append(value)
            else:
                resolved.append(argument)
        arguments = resolved
    os.environ["DEPLOYKIT_RELEASE_ID"] = os.path.basename(release)
    os.chdir(release)
    os.execv(program, [program, *arguments])
    return 1  # not reached


# <app_root>/shared/<CONFIGURED>: the fingerprint of the node's last configuration (the rollout's
# stage.yml records it once the node is configured for a release).
CONFIGURED = "configured"


def configuration(root: str, given: str, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """{configuration: the fingerprint of the node's configuration for the release of
    ``manifest`` (``given``: the controller's digest of the configuration code and inventory),
    configured: whether the one recorded on the node (root's, in the root-only shared/) is the
    same}. The stage skips configuring a node that is; a deploy is settled only where it is."""
    if not given:
        return {"configuration": "", "configured": False}
    release = {"name": manifest.get("name"), "contract": manifest.get("contract")}
    digest = hashlib.sha256(f"{given}\0{json.dumps(release, sort_keys=True)}".encode()).hexdigest()
    try:
        with open(os.path.join(root, "shared", CONFIGURED), encoding="utf-8") as handle:
            recorded = handle.read().strip()
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        recorded = ""
    return {"configuration": digest, "configured": recorded == digest}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["exec"]:
        # Everything after PROGRAM is the program's own (no option parsing here).
        release_id = None
        if argv[1:2] == ["--release"] and len(argv) > 2:
            release_id, argv = argv[2], argv[:1] + argv[3:]
        if len(argv) < 3:
            print(
                "usage: deploykit-release exec [--release ID] APP_ROOT PROGRAM [ARGS ...]",
                file=sys.stderr,
            )
            return 2
        return cmd_exec(argv[1], argv[2], argv[3:], release_id)
    parser = argparse.ArgumentParser(prog="deploykit-release", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser("verify")
    verify.add_argument("release_dir")
    verify.add_argument("--checksum")
    verify.set_defaults(func=cmd_verify)
    prune = commands.add_parser("prune")
    prune.add_argument("releases_dir")
    prune.add_argument("--keep", type=int, required=True)
    prune.add_argument("--current")
    prune.add_argument("--protect", action="append", default=[])
    prune.add_argument("--artifacts")
    prune.set_defaults(func=cmd_prune)
    stamp = commands.add_parser("stamp")
    stamp.add_argument("release_dir")
    stamp.set_defaults(func=cmd_stamp)
    running = commands.add_parser("running")
    running.add_argument("unit")
    running.add_argument("--file", action="append", default=[])
    running.set_defaults(func=cmd_running)
    survey = commands.add_parser("survey")
    survey.add_argument("app_root")
    survey.add_argument("--unit", action="append", default=[])
    survey.add_argument("--health-url")
    survey.set_defaults(func=cmd_survey)
    commands.add_parser("exec", help="APP_ROOT PROGRAM [ARGS ...] (see above)")
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
