#!/usr/bin/python3
"""deploykit's baked pages, one implementation everywhere (Python standard library only):

- deploykit.fleet.pages imports it (a deploy publishes its release's build-time pages on a
  balancer), deploykit.fleet.bake reads the bake's record with it, and the controller imports it;
- the bake role installs this same file as /usr/local/libexec/deploykit-pages: on the bake worker
  the systemd timer runs ``bake``; on the balancers ``receive`` is the ONLY command the bake
  worker's SSH key may run (a forced command in root's authorized_keys).

deploykit-pages bake APP_ROOT --config FILE
    FILE (JSON, written by the bake role): balancers (addresses), identity (the SSH key),
    known_hosts, user, port, keep (bakes kept), timeout (seconds), purge_command (an argv, or []).
    Bake the live release's pages from live data: the contract's bake(out_dir) runs in the live
    release's virtualenv (through deploykit-release exec) with this process's environment (the
    application's settings) and DEPLOYKIT_BAKE=live, into APP_ROOT/bakes/<bake id>. The pages are
    checked (plain files, plain names, at least one), sent to every balancer (``stage``), and only
    when every balancer has them whole, switched live on each (``publish``). A failure anywhere
    leaves every balancer's pages as they were. The record of the run is APP_ROOT/bakes/last.json.
    Exits 0 when the pages are live everywhere (or the release bakes nothing), 1 otherwise.

deploykit-pages receive APP_ROOT    (the request comes in SSH_ORIGINAL_COMMAND)
    ``stage BAKE_ID``: read a tar of pages on stdin into APP_ROOT/static/bakes/BAKE_ID (made whole
    under a temporary name, then renamed); every member is checked as ``bake`` checks them.
    ``publish BAKE_ID KEEP``: switch APP_ROOT/static/current to those pages, atomically, rewrite
    HAProxy's list of baked paths (reloading HAProxy when it changed), keep the newest KEEP bakes.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote

try:
    from ansible_collections.deploykit.fleet.plugins.module_utils.release import (
        RELEASE_ID_RE,
        STAMP,
        load_manifest,
        prune,
        stamp,
        switch_link,
    )
except ImportError:  # installed as /usr/local/libexec/deploykit-pages, beside deploykit-release
    import importlib.machinery
    import importlib.util

    _HELPER = os.path.join(os.path.dirname(os.path.realpath(__file__)), "deploykit-release")
    _loader = importlib.machinery.SourceFileLoader("deploykit_release", _HELPER)
    _spec = importlib.util.spec_from_loader("deploykit_release", _loader)
    _release = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
    _loader.exec_module(_release)
    RELEASE_ID_RE = _release.RELEASE_ID_RE
    STAMP = _release.STAMP
    load_manifest = _release.load_manifest
    prune = _release.prune
    stamp = _release.stamp
    switch_link = _release.switch_link

#: A part of a page's path: not hidden (nor . or ..), no control character (HAProxy's list holds
#: the paths URL-quoted, one a line).
NAME_PART_RE = re.compile(r"[^./\x00-\x1f\x7f][^/\x00-\x1f\x7f]{0,254}\Z")
#: <UTC time>-<release id>: the time has no "-", so the release id is what follows the first.
BAKE_ID_RE = re.compile(r"[0-9]{8}T[0-9]{6}\.[0-9]{3}Z-" + RELEASE_ID_RE.pattern)
#: What one bake may hold: more is a bake gone wrong, not a site.
MAX_PAGES = 50_000
MAX_BYTES = 512 * 1024 * 1024
RECORD = "last.json"
HELPER = "/usr/local/libexec/deploykit-release"
PATHS_FILE = "/etc/haproxy/baked-paths.lst"
LIVE_LINK = "/var/lib/deploykit-pages"
#: The bake callable, run in the release's virtualenv: `python -c BAKE_CODE module:attr out_dir`.
BAKE_CODE = (
    "import importlib, pathlib, sys; m, _, a = sys.argv[1].partition(':'); "
    "getattr(importlib.import_module(m), a)(pathlib.Path(sys.argv[2]))"
)

HEADER = """\
# Written by deploykit (deploykit-pages): do not edit.
#
# The baked pages of {label}, one URL path a line (which release or bake they come from is not
# written here: a new one with the same paths leaves the file as it is, and HAProxy unreloaded).
# HAProxy sends GET and HEAD requests for exactly these paths to nginx (backend static), as long
# as nginx is up; everything else goes to the app clones. HAProxy reads it at start and at every
# reload.
"""


class PagesProblem(Exception):
    """Pages that cannot be published: what is wrong, naming the file or the host."""


def check_page_name(name: str) -> str:
    """A page's path relative to the pages' root, checked part by part; returned as given."""
    parts = name.split("/")
    if not all(NAME_PART_RE.match(part) for part in parts):
        raise PagesProblem(
            f"{name!r}: not a page name deploykit publishes (no part of the path may start with "
            "a dot or hold a control character)"
        )
    return name


def baked_paths(pages: Iterable[str]) -> list[str]:
    """The URL paths HAProxy routes to nginx for these pages (paths relative to the root):
    each page, and the directory of every index.html."""
    paths = set()
    for page in pages:
        if page == "index.html" or page.endswith("/index.html"):
            paths.add(quote("/" + page[: -len("index.html")], safe="/"))
        paths.add(quote("/" + page, safe="/"))
    return sorted(paths)


def pages_in(root: str) -> list[str]:
    """Every page under ``root``, checked: plain files with plain names, within the limits."""
    pages: list[str] = []
    total = 0
    for directory, subdirectories, files in os.walk(root):
        relative = os.path.relpath(directory, root)
        for entry in sorted(subdirectories + files):
            if relative == "." and entry == STAMP:
                continue  # when it was installed: the order of pruning, not a page
            name = entry if relative == "." else f"{relative}/{entry}"
            check_page_name(name)
            path = os.path.join(directory, entry)
            if os.path.islink(path):
                raise PagesProblem(f"{name}: a symbolic link (pages are plain files)")
            if entry in files:
                if not os.path.isfile(path):
                    raise PagesProblem(f"{name}: not a regular file")
                pages.append(name)
                total += os.path.getsize(path)
        if len(pages) > MAX_PAGES or total > MAX_BYTES:
            raise PagesProblem(f"more than {MAX_PAGES} pages or {MAX_BYTES} bytes: refused")
    if not pages:
        raise PagesProblem("no page at all: nothing would be served")
    return sorted(pages)


def paths_list(label: str, paths: Iterable[str]) -> str:
    return HEADER.format(label=label) + "".join(f"{path}\n" for path in paths)


def write_paths_list(paths_file: str, content: str, reload: Callable[[], None] | None) -> bool:
    """HAProxy's list of baked paths, replaced atomically when it differs, then ``reload``."""
    try:
        with open(paths_file, encoding="utf-8") as handle:
            if handle.read() == content:
                return False
    except FileNotFoundError:
        pass
    partial = paths_file + ".partial"
    with open(partial, "w", encoding="utf-8") as handle:
        handle.write(content)
    os.chmod(partial, 0o644)
    os.replace(partial, paths_file)
    if reload is not None:
        reload()
    return True


def reload_haproxy() -> None:
    proc = subprocess.run(
        ["systemctl", "reload", "haproxy.service"], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise PagesProblem(f"systemctl reload haproxy: rc {proc.returncode}: {proc.stderr.strip()}")


def go_live(
    static: str,
    kind: str,
    pages_id: str,
    paths: list[str],
    *,
    label: str,
    keep: int,
    paths_file: str = PATHS_FILE,
    live_link: str = LIVE_LINK,
    reload: Callable[[], None] | None = reload_haproxy,
    protect: Iterable[str] = (),
) -> dict[str, Any]:
    """Make static/<kind>/<pages_id> (whole already; ``paths`` its URL paths) the pages served:
    static/current switched to it and nginx's root (``live_link``) to static/current, each by one
    rename; HAProxy's list of baked paths rewritten; the oldest of static/<kind> beyond ``keep``
    pruned (never the live one, nor ``protect``). What changed."""
    target = os.path.join(static, kind, pages_id)
    stamped = stamp(target)
    current = os.path.join(static, "current")
    switched = switch_link(current, f"{kind}/{pages_id}")
    try:
        relinked = switch_link(live_link, current)
    except (OSError, ValueError) as error:
        raise PagesProblem(f"the pages nginx serves ({live_link}): {error}") from None
    list_changed = write_paths_list(paths_file, paths_list(label, paths), reload)
    pruned = prune(os.path.join(static, kind), keep, current, [pages_id, *protect])["removed"]
    return {
        "changed": stamped or switched or relinked or list_changed or bool(pruned),
        "paths": paths,
        "pruned": pruned,
        "list_changed": list_changed,
    }


def served_pages(app_root: str) -> tuple[str | None, str | None]:
    """(the release whose pages a balancer serves, the bake from live data they are, if any):
    read from static/current, which points at releases/<release id> or bakes/<bake id>."""
    link = os.path.join(app_root, "static", "current")
    if not os.path.islink(link):
        return None, None
    kind, _, name = os.readlink(link).rpartition("/")
    if kind == "bakes" and BAKE_ID_RE.match(name):
        return name.partition("-")[2], name
    return name, None


def make_dirs(*paths: str) -> None:
    for path in paths:
        if not os.path.isdir(path):
            os.mkdir(path, 0o755)


# -- receive: on a balancer, the bake worker's only command ------------------------------------


def receive_tar(stream: Any, destination: str) -> int:
    """The pages of a tar stream written under ``destination`` (which must not exist), every
    member checked first: directories and regular files only, plain names, within the limits.
    Nothing of the tar's owners or modes is kept: root's files, 0644, directories 0755."""
    os.mkdir(destination, 0o755)
    count = total = 0
    with tarfile.open(fileobj=stream, mode="r|") as archive:
        for member in archive:
            name = member.name.removeprefix("./").rstrip("/")
            if name in ("", "."):
                continue
            check_page_name(name)
            path = os.path.join(destination, name)
            if member.isdir():
                os.makedirs(path, 0o755, exist_ok=True)
                continue
            if not member.isreg():
                raise PagesProblem(f"{name}: not a regular file (pages are plain files)")
            count += 1
            total += member.size
            if count > MAX_PAGES or total > MAX_BYTES:
                raise PagesProblem(f"more than {MAX_PAGES} pages or {MAX_BYTES} bytes: refused")
            os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
            source = archive.extractfile(member)
            if source is None:
                raise PagesProblem(f"{name}: cannot be read from the stream")
            with open(path, "xb") as handle:
                shutil.copyfileobj(source, handle)
            os.chmod(path, 0o644)
    return count


def receive(app_root: str, request: str, stream: Any, **live: Any) -> dict[str, Any]:
    """One request of the bake worker (SSH_ORIGINAL_COMMAND): ``stage BAKE_ID`` or
    ``publish BAKE_ID KEEP``. ``live``: go_live's paths_file, live_link and reload, when not
    the balancer's own."""
    words = shlex.split(request)
    verb, args = (words[0], words[1:]) if words else ("", [])
    if not (
        (verb == "stage" and len(args) == 1)
        or (verb == "publish" and len(args) == 2 and args[1].isdigit())
    ) or not BAKE_ID_RE.match(args[0]):
        raise PagesProblem(f"not a request deploykit-pages receive answers: {request!r}")
    bake_id = args[0]
    static = os.path.join(app_root, "static")
    bakes = os.path.join(static, "bakes")
    target = os.path.join(bakes, bake_id)
    if verb == "stage":
        make_dirs(static, bakes)
        if os.path.isdir(target):
            return {"staged": bake_id, "pages": len(pages_in(target))}
        partial = os.path.join(bakes, f".{bake_id}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        try:
            count = receive_tar(stream, partial)
            pages_in(partial)
        except (PagesProblem, tarfile.TarError, OSError) as error:
            shutil.rmtree(partial, ignore_errors=True)
            raise PagesProblem(f"stage {bake_id}: {error}") from None
        os.rename(partial, target)
        return {"staged": bake_id, "pages": count}
    if not os.path.isdir(target):
        raise PagesProblem(f"publish {bake_id}: not staged on this balancer")
    keep = max(1, min(int(args[1]), 100))
    paths = baked_paths(pages_in(target))
    label = os.path.basename(os.path.normpath(app_root))
    answer = go_live(static, "bakes", bake_id, paths, label=label, keep=keep, **live)
    return {"published": bake_id, **answer}


# -- bake: on the bake worker --------------------------------------------------------------------


def write_tar(root: str, stream: Any) -> None:
    """The pages under ``root`` as a tar (what ``stage`` reads), written to ``stream`` and
    rewound."""
    with tarfile.open(fileobj=stream, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for page in pages_in(root):
            info = archive.gettarinfo(os.path.join(root, page), arcname=page)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            with open(os.path.join(root, page), "rb") as handle:
                archive.addfile(info, handle)
    stream.seek(0)


def read_record(app_root: str) -> dict[str, Any] | None:
    """The last bake's record (APP_ROOT/bakes/last.json), None before the first bake."""
    try:
        with open(os.path.join(app_root, "bakes", RECORD), encoding="utf-8") as handle:
            record = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        return {"outcome": "unknown", "reason": f"{RECORD} cannot be read: {error}"}
    return record if isinstance(record, dict) else None


def write_record(app_root: str, record: dict[str, Any]) -> None:
    path = os.path.join(app_root, "bakes", RECORD)
    with open(path + ".partial", "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1, sort_keys=True)
    os.replace(path + ".partial", path)


def tail(text: str, lines: int = 3) -> str:
    return " / ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip())


class Bakery:
    """One bake on the bake worker: run the live release's bake, check the pages, publish them on
    every balancer or on none."""

    def __init__(self, app_root: str, config: dict[str, Any]) -> None:
        self.app_root = app_root
        self.balancers = [str(host) for host in config["balancers"]]
        self.identity = str(config["identity"])
        self.known_hosts = str(config["known_hosts"])
        self.user = str(config.get("user", "root"))
        self.port = int(config.get("port", 22))
        self.keep = int(config.get("keep", 3))
        self.timeout = float(config.get("timeout", 600))
        self.purge_command = [str(word) for word in config.get("purge_command") or []]
        self.bakes = os.path.join(app_root, "bakes")
        self.deadline = time.monotonic() + self.timeout
        self.record: dict[str, Any] = {
            "started": time.time(),
            "balancers": dict.fromkeys(self.balancers, "not contacted"),
        }

    def left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise PagesProblem(f"the bake's deadline ({self.timeout} s) passed")
        return left

    def ssh(self, host: str, request: str, tar_of: str | None) -> str:
        argv = [
            "ssh", "-i", self.identity, "-l", self.user, "-p", str(self.port),
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "ConnectTimeout=10",
            host, request,
        ]  # fmt: skip
        timeout = min(self.left(), 120)
        verb = request.split(maxsplit=1)[0]
        with tempfile.TemporaryFile() as stream:
            if tar_of is not None:
                write_tar(tar_of, stream)
            try:
                proc = subprocess.run(
                    argv, stdin=stream if tar_of is not None else subprocess.DEVNULL,
                    capture_output=True, text=True, timeout=timeout, check=False,
                )  # fmt: skip
            except subprocess.TimeoutExpired:
                raise PagesProblem(f"{host}: {verb} took more than {timeout:.0f} s") from None
        if proc.returncode != 0:
            raise PagesProblem(f"{host}: {verb}: {tail(proc.stderr) or proc.returncode}")
        return proc.stdout

    def on_every_balancer(self, request: str, tar_of: str | None, done: str) -> None:
        hosts = self.balancers
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
            futures = {host: pool.submit(self.ssh, host, request, tar_of) for host in hosts}
        failed = []
        for host, future in futures.items():
            error = future.exception()
            self.record["balancers"][host] = done if error is None else f"failed: {error}"
            if error is not None:
                failed.append(str(error))
        if failed:
            raise PagesProblem("; ".join(failed))

    def run_bake(self, bake: str, release_id: str, out_dir: str) -> list[str]:
        """The release's bake callable run into ``out_dir``, in its virtualenv, within the
        deadline; the pages it wrote, checked."""
        environment = {**os.environ, "DEPLOYKIT_BAKE": "live"}
        argv = [HELPER, "exec", self.app_root, "python", "-c", BAKE_CODE, bake, out_dir]
        print(f"bake of {release_id}: {bake}, from live data", flush=True)
        try:
            proc = subprocess.run(
                argv, env=environment, capture_output=True, text=True,
                timeout=self.left(), check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise PagesProblem(f"{bake} ran past the deadline ({self.timeout} s)") from None
        if proc.returncode != 0:
            raise PagesProblem(
                f"{bake} failed (exit {proc.returncode}): "
                f"{tail(proc.stderr or proc.stdout) or 'no output'}"
            )
        return pages_in(out_dir)

    def bake(self) -> int:
        manifest = load_manifest(os.path.realpath(os.path.join(self.app_root, "current")))
        release_id = manifest["release_id"]
        contract = manifest.get("contract") or {}
        self.record["release_id"] = release_id
        if not contract.get("bake"):
            self.record.update(outcome="nothing to bake", reason=f"{release_id} bakes nothing")
            return 0
        now = time.time()
        # Milliseconds: two bakes in one second (a deploy's, then --now) are two bakes.
        stamp_text = (
            time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
        )
        bake_id = f"{stamp_text}-{release_id}"
        self.record["bake_id"] = bake_id
        partial = os.path.join(self.bakes, f".{bake_id}.partial")
        target = os.path.join(self.bakes, bake_id)
        shutil.rmtree(partial, ignore_errors=True)
        os.mkdir(partial, 0o750)
        try:
            pages = self.run_bake(contract["bake"], release_id, partial)
            os.rename(partial, target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        stamp(target)
        self.record.update(pages=len(pages), paths=baked_paths(pages))
        print(f"bake {bake_id}: {len(pages)} page(s); sending them to every balancer", flush=True)
        self.on_every_balancer(f"stage {bake_id}", target, "staged")
        self.on_every_balancer(f"publish {bake_id} {self.keep}", None, "published")
        self.record.update(outcome="published", reason="")
        print(f"bake {bake_id}: live on {', '.join(self.balancers)}", flush=True)
        prune(self.bakes, self.keep, None, [bake_id])
        return self.purge(bake_id)

    def purge(self, bake_id: str) -> int:
        """The inventory's purge hook (a CDN's cache, say), after the pages are live everywhere."""
        if not self.purge_command:
            return 0
        argv = self.purge_command
        environment = {
            **os.environ,
            "DEPLOYKIT_BAKE_ID": bake_id,
            "DEPLOYKIT_BAKE_PATHS": " ".join(self.record["paths"]),
            "DEPLOYKIT_BALANCERS": " ".join(self.balancers),
        }
        try:
            proc = subprocess.run(
                argv, env=environment, capture_output=True, text=True,
                timeout=min(self.left(), 60), check=False,
            )  # fmt: skip
            failure = (
                None if proc.returncode == 0 else f"exit {proc.returncode}: {tail(proc.stderr)}"
            )
        except (OSError, subprocess.TimeoutExpired, PagesProblem) as error:
            failure = str(error)
        self.record["purge"] = "done" if failure is None else f"failed: {failure}"
        if failure is None:
            return 0
        self.record["reason"] = f"the pages are live, but the purge hook failed: {failure}"
        print(self.record["reason"], file=sys.stderr, flush=True)
        return 1

    def run(self) -> int:
        try:
            code = self.bake()
        except (PagesProblem, OSError, ValueError, KeyError) as error:
            self.record.update(
                outcome="failed",
                reason=f"{error}; every balancer keeps the pages it served",
            )
            print(f"bake failed: {self.record['reason']}", file=sys.stderr, flush=True)
            code = 1
        self.record["finished"] = time.time()
        self.record["seconds"] = round(self.record["finished"] - self.record["started"], 1)
        write_record(self.app_root, self.record)
        return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deploykit-pages", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    bake = commands.add_parser("bake", help="bake from live data and publish on every balancer")
    bake.add_argument("app_root")
    bake.add_argument("--config", required=True, help="the bake's settings (JSON)")
    receive_parser = commands.add_parser("receive", help="a balancer's end (forced SSH command)")
    receive_parser.add_argument("app_root")
    args = parser.parse_args(argv)
    if args.command == "bake":
        with open(args.config, encoding="utf-8") as handle:
            return Bakery(args.app_root, json.load(handle)).run()
    try:
        request = os.environ.get("SSH_ORIGINAL_COMMAND", "")
        answer = receive(args.app_root, request, sys.stdin.buffer)
    except (PagesProblem, OSError, ValueError) as error:
        print(f"deploykit-pages receive: {error}", file=sys.stderr)
        return 1
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
