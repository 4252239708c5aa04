"""Read a deploykit release artifact's manifest ON THE CONTROLLER (run by the release role through
the pipe lookup, with the controller's Python; standard library only).

    python3 read_manifest.py ARTIFACT

Always exits 0 and prints one JSON object: {"manifest": {...}} when the artifact is usable, else
{"error": "<what is wrong, naming the file>"} for the role to fail with. It checks what the nodes
rely on before anything is uploaded: manifest.json is the archive's first member, it is a
consistent deploykit manifest (its checksum matches its files list), every member is a plain file
or directory with a safe path, and every file the manifest lists is in the archive. The sha256 of
each file is checked on the nodes, after unpacking (deploykit-release verify).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import tarfile
import zlib

MANIFEST = "manifest.json"
NAME_RE = re.compile(r"[a-z][a-z0-9-]*\Z")
RELEASE_ID_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,127}\Z")


def files_checksum(files: dict) -> str:
    canonical = json.dumps(dict(files), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def unsafe(name: str) -> bool:
    parts = name.rstrip("/").split("/")
    return name.startswith("/") or ".." in parts or "" in parts or name in ("", ".")


def read(path: str) -> dict:
    try:
        tar = tarfile.open(path, "r:gz")
    except FileNotFoundError:
        return {
            "error": f"{path}: no such file: give the path of an artifact made by deploykit build"
        }
    except IsADirectoryError:
        return {
            "error": f"{path}: a directory: give the path of an artifact made by deploykit build"
        }
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        return {"error": f"{path}: not a gzip-compressed tar archive ({error})"}
    manifest = None
    members: set[str] = set()
    try:
        with tar:
            for index, member in enumerate(tar):
                name = member.name
                if index == 0:
                    if name != MANIFEST or not member.isfile():
                        return {
                            "error": f"{path}: its first member is {name!r}, not {MANIFEST}: "
                            "not a deploykit release artifact"
                        }
                    handle = tar.extractfile(member)
                    raw = handle.read() if handle is not None else b""
                    try:
                        manifest = json.loads(raw)
                    except ValueError as error:
                        return {"error": f"{path}: {MANIFEST} is not valid JSON ({error})"}
                    continue
                if unsafe(name):
                    return {"error": f"{path}: {name!r}: an unsafe path in the archive"}
                if not (member.isfile() or member.isdir()):
                    return {"error": f"{path}: {name}: neither a file nor a directory"}
                if member.isfile():
                    members.add(name)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        return {"error": f"{path}: the archive is truncated or corrupt ({error}): copy it again"}
    if not isinstance(manifest, dict):
        return {"error": f"{path}: {MANIFEST} is not a JSON object"}
    files = manifest.get("files")
    if not isinstance(files, dict):
        return {"error": f"{path}: {MANIFEST} has no files list: not a deploykit manifest"}
    if manifest.get("checksum") != files_checksum(files):
        return {
            "error": f"{path}: {MANIFEST}: its checksum does not match its files list "
            "(the manifest was edited after the build)"
        }
    for key in ("name", "release_id", "requirement", "contract"):
        if key not in manifest:
            return {"error": f"{path}: {MANIFEST} has no {key!r}: not a deploykit manifest"}
    if not NAME_RE.match(str(manifest["name"])):
        return {"error": f"{path}: {MANIFEST}: name {manifest['name']!r} is not a deploykit name"}
    if not RELEASE_ID_RE.match(str(manifest["release_id"])):
        return {
            "error": f"{path}: {MANIFEST}: release_id {manifest['release_id']!r} is not a valid id"
        }
    missing = sorted(set(files) - members)
    if missing:
        return {"error": f"{path}: {missing[0]}: listed in {MANIFEST} but missing from the archive"}
    extra = sorted(members - set(files))
    if extra:
        return {
            "error": f"{path}: {extra[0]}: not in {MANIFEST} (added to the archive after the build)"
        }
    return {"manifest": manifest}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(json.dumps({"error": "usage: read_manifest.py ARTIFACT"}))
    else:
        print(json.dumps(read(sys.argv[1])))
