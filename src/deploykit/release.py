"""Releases: the application contract, and the artifact ``deploykit build`` makes once per release.

An application declares itself under ``[tool.deploykit]`` in its pyproject.toml (the
application contract: name, wsgi, health_path, and optionally worker, bake, settings). ``build``
turns its source into one artifact, ``<name>-<release id>.tar.gz``, reused for every node:

- ``source/``: the application's source tree (without VCS data, caches, virtualenvs, build output);
- ``wheelhouse/``: wheels of the application and of all its dependencies, for the nodes' platform
  (Debian 12, CPython 3.11, x86_64), so that nodes install offline;
- ``baked/``: the pages written by the contract's bake callable, run in a throwaway virtualenv
  installed offline from the wheelhouse (which also proves the wheelhouse complete);
- ``manifest.json``: the release id, the source revision, the contract, the sha256 of every other
  file and a checksum over them (the value ``deploykit status`` compares across clones).

The same source gives the same release id, the same manifest and the same bytes: the release id
hashes the source, the application's own wheel is built with a fixed SOURCE_DATE_EPOCH, and the
archive has sorted entries, fixed mtimes, owner 0:0 and a gzip header without a timestamp.
"""

from __future__ import annotations

import difflib
import gzip
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from packaging.requirements import Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from uv import find_uv_bin

from ansible_collections.deploykit.fleet.plugins.module_utils.release import (
    HEALTH_PATH_RE,
    NAME_RE,
    ReleaseProblem,
    files_checksum,
    verify_artifact,
)
from deploykit.errors import BadInput, BuildError

Log = Callable[[str], object]

# --- the nodes' platform --------------------------------------------------------------------

TARGET_PYTHON = "cp311"
TARGET_PYTHON_VERSION = (3, 11)
TARGET_ARCH = "x86_64"
TARGET_GLIBC = (2, 36)  # Debian 12 (bookworm)
# The platform in the wheel-tag language: any manylinux wheel up to glibc 2.36 on x86_64 runs there.
TARGET_PLATFORM = f"manylinux_{TARGET_GLIBC[0]}_{TARGET_GLIBC[1]}_{TARGET_ARCH}"
TARGET_DESCRIPTION = "Debian 12, CPython 3.11, x86_64"
# The nodes' interpreter, as environment markers see it (Debian 12 ships CPython 3.11.2). pip
# evaluates markers with the controller's interpreter, so a dependency that only the nodes' exact
# version needs (redis needs async-timeout where python_full_version < "3.11.3") would be missing
# from a wheelhouse built on a newer 3.11: the build adds it (see _complete_for_nodes).
TARGET_MARKER_ENVIRONMENT = {
    "implementation_name": "cpython",
    "implementation_version": "3.11.2",
    "os_name": "posix",
    "platform_machine": TARGET_ARCH,
    "platform_python_implementation": "CPython",
    "platform_system": "Linux",
    "python_full_version": "3.11.2",
    "python_version": "3.11",
    "sys_platform": "linux",
    "extra": "",
}

# Wheel platform tags the nodes accept, newest first (PEP 600 names and their legacy aliases).
_LEGACY_MANYLINUX = {
    (2, 17): "manylinux2014",
    (2, 12): "manylinux2010",
    (2, 5): "manylinux1",
}
_LOCAL_PLATFORM = f"linux_{TARGET_ARCH}"  # a wheel compiled on this controller


def _target_platforms() -> list[str]:
    platforms: list[str] = []
    for minor in range(TARGET_GLIBC[1], 4, -1):
        platforms.append(f"manylinux_2_{minor}_{TARGET_ARCH}")
        legacy = _LEGACY_MANYLINUX.get((2, minor))
        if legacy:
            platforms.append(f"{legacy}_{TARGET_ARCH}")
    platforms.append(_LOCAL_PLATFORM)
    return platforms


SUPPORTED_TAGS: frozenset[Tag] = frozenset(
    (
        *cpython_tags(TARGET_PYTHON_VERSION, abis=[TARGET_PYTHON], platforms=_target_platforms()),
        *compatible_tags(
            TARGET_PYTHON_VERSION, interpreter=TARGET_PYTHON, platforms=_target_platforms()
        ),
    )
)

# --- reproducibility ------------------------------------------------------------------------

# 1980-01-01T00:00:00Z: the earliest time a zip (a wheel) can hold. Used for every timestamp that
# would otherwise come from the clock: the application's wheel and the archive's entries.
SOURCE_DATE_EPOCH = 315532800
ARTIFACT_FORMAT = 1
MANIFEST_NAME = "manifest.json"

# Never part of the source: VCS data, caches, virtualenvs, build output.
_EXCLUDED_DIRS = frozenset(
    {".git", ".hg", ".svn", "__pycache__", ".venv", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
    | {".tox", ".nox"}
)
_EXCLUDED_TOP_DIRS = frozenset({"build", "dist"})  # setuptools' output, next to pyproject.toml
_EXCLUDED_SUFFIXES = (".pyc", ".pyo")

# --- the application contract ---------------------------------------------------------------

CONTRACT_KEYS = (
    "name", "wsgi", "health_path", "live_path", "worker", "bake", "migrate", "settings",
)  # fmt: skip
_REQUIRED_KEYS = ("name", "wsgi", "health_path")
_EXAMPLES = {
    "name": 'name = "shop"',
    "wsgi": 'wsgi = "shop.web:app"',
    "health_path": 'health_path = "/healthz"',
    "live_path": 'live_path = "/livez"',
    "worker": 'worker = "shop.jobs:celery_app"',
    "bake": 'bake = "shop.bake:bake"',
    "migrate": 'migrate = "shop.migrate:main"',
    "settings": 'settings = ["SECRET_KEY", "REDIS_URL"]',
}
_NAME_RE = NAME_RE
_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
_DOTTED = rf"{_IDENTIFIER}(?:\.{_IDENTIFIER})*"
_ENTRY_POINT_RE = re.compile(rf"{_DOTTED}:{_DOTTED}\Z")
_HEALTH_PATH_RE = HEALTH_PATH_RE
_SETTING_RE = re.compile(r"[A-Z][A-Z0-9_]*\Z")
_VERSION_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}\Z")


@dataclass(frozen=True)
class AppContract:
    """What an application declares under ``[tool.deploykit]``; ``root``: its project directory."""

    name: str
    wsgi: str
    health_path: str
    worker: str | None
    bake: str | None
    settings: tuple[str, ...]
    root: Path
    # migrate(): run once per deploy, with the new release's code, before any node switches to it.
    migrate: str | None = None
    # Liveness: answers 200 while the process serves, asking no shared service (what the
    # balancer's check should ask); None: the application has only health_path.
    live_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The contract as the manifest records it (without the controller's path)."""
        return {
            "name": self.name,
            "wsgi": self.wsgi,
            "health_path": self.health_path,
            "live_path": self.live_path,
            "worker": self.worker,
            "bake": self.bake,
            "migrate": self.migrate,
            "settings": list(self.settings),
        }


def _read_pyproject(root: Path) -> tuple[Path, dict[str, Any]]:
    if not root.is_dir():
        raise BadInput(
            f"{root}: no such directory: give the application's project directory "
            "(the one holding pyproject.toml)"
        )
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        raise BadInput(
            f"{root}: no pyproject.toml: an application is a Python project that declares "
            "itself under [tool.deploykit] in pyproject.toml"
        )
    try:
        with pyproject.open("rb") as handle:
            return pyproject, tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise BadInput(f"{pyproject}: not valid TOML: {error}") from error
    except OSError as error:
        raise BadInput(f"{pyproject}: cannot be read: {error.strerror}") from error


def _string(where: str, table: Mapping[str, Any], key: str) -> str | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadInput(f"{where}: {key} = {value!r}: give a string, e.g. {_EXAMPLES[key]}")
    return value


def _entry_point(where: str, table: Mapping[str, Any], key: str, what: str) -> str | None:
    value = _string(where, table, key)
    if value is not None and not _ENTRY_POINT_RE.match(value):
        raise BadInput(
            f"{where}: {key} = {value!r}: give {what} as module:attribute, e.g. {_EXAMPLES[key]}"
        )
    return value


def _settings(where: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise BadInput(
            f"{where}: settings = {value!r}: give a list of UPPER_CASE environment variable "
            f"names, e.g. {_EXAMPLES['settings']}"
        )
    seen: set[str] = set()
    for item in value:
        if not isinstance(item, str) or not _SETTING_RE.match(item):
            raise BadInput(
                f"{where}: settings: {item!r} is not an UPPER_CASE environment variable name "
                "(A-Z, digits and _, starting with a letter)"
            )
        if item in seen:
            raise BadInput(f"{where}: settings: {item!r} is listed twice")
        seen.add(item)
    return tuple(value)


def artifact_filename(app: str, release_id: str) -> str:
    """The artifact's file name: the application's name and the release id (which does not
    carry the name)."""
    return f"{app}-{release_id}.tar.gz"


def load_contract(app_dir: Path) -> AppContract:
    """Read and check ``[tool.deploykit]`` in ``app_dir``/pyproject.toml; BadInput names each
    mistake and what to write instead."""
    root = app_dir.resolve()
    pyproject, document = _read_pyproject(root)
    tool = document.get("tool")
    table = tool.get("deploykit") if isinstance(tool, dict) else None
    if table is None:
        raise BadInput(
            f"{pyproject}: no [tool.deploykit] table: declare the application's name, wsgi and "
            f"health_path, e.g. {_EXAMPLES['name']}, {_EXAMPLES['wsgi']}, "
            f"{_EXAMPLES['health_path']}"
        )
    where = f"{pyproject} [tool.deploykit]"
    if not isinstance(table, dict):
        raise BadInput(f"{where}: must be a table of keys ({', '.join(CONTRACT_KEYS)})")
    for key in table:
        if key not in CONTRACT_KEYS:
            close = difflib.get_close_matches(key, CONTRACT_KEYS, n=1)
            guess = f" (did you mean {close[0]!r}?)" if close else ""
            raise BadInput(
                f"{where}: unknown key {key!r}{guess}: the keys are {', '.join(CONTRACT_KEYS)}"
            )
    for key in _REQUIRED_KEYS:
        if key not in table:
            raise BadInput(f"{where}: {key} is required, e.g. {_EXAMPLES[key]}")

    name = _string(where, table, "name")
    if name is None or not _NAME_RE.match(name):
        raise BadInput(
            f"{where}: name = {name!r}: use lowercase letters, digits and '-', starting with a "
            f"letter, e.g. {_EXAMPLES['name']}"
        )
    wsgi = _entry_point(where, table, "wsgi", "the WSGI application")
    health_path = _string(where, table, "health_path")
    if health_path is None or not _HEALTH_PATH_RE.match(health_path):
        raise BadInput(
            f"{where}: health_path = {health_path!r}: give a URL path starting with / (no "
            f"spaces, query or fragment), e.g. {_EXAMPLES['health_path']}"
        )
    live_path = _string(where, table, "live_path")
    if live_path is not None and not _HEALTH_PATH_RE.match(live_path):
        raise BadInput(
            f"{where}: live_path = {live_path!r}: give a URL path starting with / (no spaces, "
            f"query or fragment), e.g. {_EXAMPLES['live_path']}"
        )
    worker = _entry_point(where, table, "worker", "the Celery application")
    bake = _entry_point(where, table, "bake", "the callable bake(out_dir)")
    migrate = _entry_point(where, table, "migrate", "the callable migrate()")
    settings = _settings(where, table.get("settings"))
    assert wsgi is not None  # required above
    return AppContract(
        name=name,
        wsgi=wsgi,
        health_path=health_path,
        worker=worker,
        bake=bake,
        settings=settings,
        root=root,
        migrate=migrate,
        live_path=live_path,
    )


def _project_metadata(root: Path) -> tuple[Path, str, str | None]:
    """The [project] name (what the nodes install) and its static version, if it has one."""
    pyproject, document = _read_pyproject(root)
    project = document.get("project")
    if not isinstance(project, dict) or not isinstance(project.get("name"), str):
        raise BadInput(
            f"{pyproject}: [project] name is missing: the nodes install the application by its "
            "project name from the release's wheelhouse"
        )
    version = project.get("version")
    return pyproject, project["name"], version if isinstance(version, str) else None


# --- the artifact ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Artifact:
    """A built release: the archive on the controller and its manifest."""

    path: Path
    release_id: str
    manifest: dict[str, Any]
    size: int

    @property
    def checksum(self) -> str:
        return str(self.manifest["checksum"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "release_id": self.release_id,
            "size": self.size,
            "checksum": self.checksum,
            "manifest": self.manifest,
        }


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


def _tail(text: str, lines: int = 15) -> str:
    return "\n    ".join(text.strip().splitlines()[-lines:])


# --- the build interpreter ------------------------------------------------------------------

_PROBE = """
import json, platform, sys
try:
    import pip
    pip_version = pip.__version__
except ImportError:
    pip_version = None
libc, libc_version = platform.libc_ver()
print(json.dumps({
    "implementation": sys.implementation.name,
    "version": list(sys.version_info[:2]),
    "system": platform.system(),
    "machine": platform.machine(),
    "libc": libc,
    "libc_version": libc_version,
    "pip": pip_version,
}))
"""


@dataclass(frozen=True)
class _Builder:
    python: str
    glibc: tuple[int, ...]


def _version_tuple(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for part in text.split("."):
        digits = re.match(r"\d+", part)
        if not digits:
            break
        parts.append(int(digits.group()))
    return tuple(parts)


def _inspect_python(python: str) -> _Builder:
    """The interpreter that builds the wheels must be the nodes' kind: CPython 3.11 on glibc
    Linux x86_64, with pip."""
    try:
        probe = subprocess.run(
            [python, "-c", _PROBE], capture_output=True, text=True, check=False, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BadInput(f"python {python!r}: cannot be run: {error}") from error
    if probe.returncode != 0:
        raise BadInput(
            f"python {python!r}: failed (exit {probe.returncode}): {_tail(probe.stderr)}"
        )
    facts = json.loads(probe.stdout)
    found = (
        f"{facts['implementation']} {facts['version'][0]}.{facts['version'][1]} on "
        f"{facts['system']} {facts['machine']} ({facts['libc'] or 'no glibc'})"
    )
    if (
        facts["implementation"] != "cpython"
        or tuple(facts["version"]) != TARGET_PYTHON_VERSION
        or facts["system"] != "Linux"
        or facts["machine"] != TARGET_ARCH
        or facts["libc"] != "glibc"
    ):
        raise BadInput(
            f"python {python!r} is {found}; the nodes run {TARGET_DESCRIPTION}: build with a "
            "CPython 3.11 on glibc Linux x86_64 so that every wheel fits the nodes"
        )
    if not facts["pip"]:
        raise BadInput(f"python {python!r} has no pip: run `{python} -m ensurepip` first")
    # pip builds the wheels (pip wheel); its version no longer matters: uv makes the check's venv.
    return _Builder(python=python, glibc=_version_tuple(facts["libc_version"]))


def wheel_problem(filename: str, *, builder_glibc: tuple[int, ...] | None = None) -> str | None:
    """Why the nodes cannot install this wheel, or None when they can. A wheel compiled on the
    controller (linux_x86_64) fits only when the controller's glibc is not newer than the nodes'."""
    try:
        _, _, _, tags = parse_wheel_filename(filename)
    except InvalidWheelFilename as error:
        return f"not a wheel file name ({error})"
    fitting = tags & SUPPORTED_TAGS
    if not fitting:
        shown = ", ".join(sorted(str(tag) for tag in tags))
        return f"built for {shown}, which the nodes ({TARGET_DESCRIPTION}) cannot install"
    only_local = all(tag.platform == _LOCAL_PLATFORM for tag in fitting)
    if only_local and builder_glibc is not None and builder_glibc > TARGET_GLIBC:
        controller = ".".join(map(str, builder_glibc))
        return (
            f"compiled on this controller against glibc {controller}, newer than the nodes' "
            f"glibc {TARGET_GLIBC[0]}.{TARGET_GLIBC[1]}"
        )
    return None


# --- the source tree ------------------------------------------------------------------------


def _is_virtualenv(path: Path) -> bool:
    return (path / "pyvenv.cfg").is_file()


def source_files(root: Path, *, exclude: Iterable[Path] = ()) -> list[str]:
    """The application's source files, as sorted POSIX paths relative to ``root``: everything
    but VCS data, caches, virtualenvs, *.egg-info, *.pyc and the top-level build/ and dist/."""
    excluded = {path.resolve() for path in exclude}
    found: list[str] = []
    for directory, dirnames, filenames in os.walk(root):
        here = Path(directory)
        kept = []
        for dirname in dirnames:
            path = here / dirname
            if (
                dirname in _EXCLUDED_DIRS
                or dirname.endswith(".egg-info")
                or (here == root and dirname in _EXCLUDED_TOP_DIRS)
                or path.resolve() in excluded
                or (not path.is_symlink() and _is_virtualenv(path))
            ):
                continue
            if path.is_symlink():
                raise BadInput(
                    f"{path}: a symbolic link to a directory: a release carries regular files "
                    "only; replace it with the directory or exclude it"
                )
            kept.append(dirname)
        dirnames[:] = sorted(kept)
        for filename in filenames:
            path = here / filename
            if filename == ".git" or filename.endswith(_EXCLUDED_SUFFIXES):
                continue
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise BadInput(
                    f"{path}: a symbolic link: a release carries regular files only; replace "
                    "it with a copy of its target"
                )
            if not stat.S_ISREG(mode):
                raise BadInput(f"{path}: not a regular file: remove it from the application")
            found.append(path.relative_to(root).as_posix())
    return sorted(found)


def source_hash(root: Path, files: Iterable[str]) -> str:
    """sha256 over the sorted relative paths and the contents of the source files."""
    digest = hashlib.sha256()
    for relative in sorted(files):
        data = (root / relative).read_bytes()
        digest.update(f"{relative}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def _copy_files(root: Path, files: Iterable[str], dest: Path) -> None:
    for relative in files:
        source = root / relative
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        target.chmod(_normal_mode(source.stat().st_mode))


def _normal_mode(mode: int) -> int:
    return 0o755 if mode & stat.S_IXUSR else 0o644


def _git_revision(root: Path) -> tuple[str | None, bool | None]:
    """HEAD of the checkout holding ``root`` and whether ``root`` differs from it."""

    def git(*args: str) -> subprocess.CompletedProcess[str] | None:
        try:
            return subprocess.run(
                ["git", "-C", str(root), *args],
                capture_output=True,
                text=True,
                check=False,
                timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None

    head = git("rev-parse", "--verify", "HEAD")
    if head is None or head.returncode != 0:
        return None, None
    status = git("status", "--porcelain", "--untracked-files=normal", "--", ".")
    dirty = None if status is None or status.returncode != 0 else bool(status.stdout.strip())
    return head.stdout.strip(), dirty


# --- building -------------------------------------------------------------------------------


def _build_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        SOURCE_DATE_EPOCH=str(SOURCE_DATE_EPOCH),
        PYTHONHASHSEED="0",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
    )
    return env


def _offline_env() -> dict[str, str]:
    """pip or uv with no index, no configuration file and no PIP_* or UV_* variable: only the
    wheelhouse."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PIP_", "UV_"))}
    env.update(
        PIP_CONFIG_FILE=os.devnull,
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
        PYTHONHASHSEED="0",
    )
    return env


def _run(
    command: list[str], *, env: Mapping[str, str], cwd: Path | None = None, timeout: float = 1800
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            check=False,
            env=dict(env),
            cwd=cwd,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as error:
        raise BuildError(f"{' '.join(command[:4])} ...: no result after {timeout:.0f} s") from error
    except OSError as error:
        raise BuildError(f"{command[0]}: cannot be run: {error}") from error


#: Beside the application's dependencies, the wheelhouse carries pypa/installer: a node whose
#: release keeps the previous one's dependencies installs only the application's own wheel, with
#: installer (about 0.1 s) rather than pip (0.4-0.5 s of CPU, most of it pip starting), on every
#: node at once (the stage module); a node with no such release installs the wheels resolved for
#: the nodes (the manifest's install list) in one installer run (1.1 takes several wheels). It is
#: not installed into the release's virtualenv.
STAGE_INSTALLER = "installer>=1.1,<2"


def _pip_wheel(builder: _Builder, source: Path, wheelhouse: Path, pyproject: Path) -> None:
    wheelhouse.mkdir(parents=True)
    proc = _run(
        [
            builder.python,
            "-m",
            "pip",
            "wheel",
            "--wheel-dir",
            str(wheelhouse),
            "--progress-bar",
            "off",
            str(source),
            STAGE_INSTALLER,
        ],
        env=_build_env(),
        cwd=source,
    )
    if proc.returncode != 0:
        raise BuildError(
            f"pip wheel failed (exit {proc.returncode}) for {pyproject.parent}:\n    "
            f"{_tail(proc.stdout + proc.stderr)}",
            hint=f"check [project] dependencies in {pyproject}, and that the controller reaches "
            "PyPI (or the index in pip's configuration)",
        )


def missing_for_nodes(wheelhouse: Path) -> list[str]:
    """Requirements of the wheels in WHEELHOUSE that the nodes' interpreter needs and no wheel
    there provides (by name), judged with the nodes' environment markers."""
    present = {parse_wheel_filename(w.name)[0] for w in wheelhouse.glob("*.whl")}
    missing: dict[str, str] = {}
    for wheel in sorted(wheelhouse.glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            metadata = next(
                (n for n in archive.namelist() if n.endswith(".dist-info/METADATA")), None
            )
            if metadata is None:
                continue
            text = archive.read(metadata).decode("utf-8", errors="replace")
        for line in text.splitlines():
            if not line.startswith("Requires-Dist:"):
                continue
            requirement = Requirement(line.partition(":")[2].strip())
            if requirement.marker is not None and not requirement.marker.evaluate(
                TARGET_MARKER_ENVIRONMENT
            ):
                continue
            name = canonicalize_name(requirement.name)
            if name not in present:
                requirement.marker = None
                missing.setdefault(name, str(requirement))
    return sorted(missing.values())


def _complete_for_nodes(builder: _Builder, wheelhouse: Path, log: Log) -> None:
    """Add the wheels only the nodes' interpreter needs (see TARGET_MARKER_ENVIRONMENT)."""
    for _ in range(10):  # each pass adds what the previous pass's wheels require
        missing = missing_for_nodes(wheelhouse)
        if not missing:
            return
        log(
            f"wheels the nodes' Python {TARGET_MARKER_ENVIRONMENT['python_full_version']} "
            f"also needs: {', '.join(missing)}"
        )
        proc = _run(
            [builder.python, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(wheelhouse),
             "--progress-bar", "off", *missing],
            env=_build_env(),
        )  # fmt: skip
        if proc.returncode != 0:
            raise BuildError(
                f"pip wheel failed (exit {proc.returncode}) for {', '.join(missing)}:\n    "
                f"{_tail(proc.stdout + proc.stderr)}"
            )
    raise BuildError(
        f"the wheelhouse is still incomplete for the nodes: {missing_for_nodes(wheelhouse)}"
    )


def _check_wheelhouse(
    wheelhouse: Path,
    builder: _Builder,
    contract: AppContract,
    pyproject: Path,
    project: str,
) -> str:
    """Every wheel fits the nodes; the app, gunicorn (and celery for a worker) are there. Returns
    the requirement that installs this exact build of the app."""
    present: dict[str, str] = {}
    for wheel in sorted(wheelhouse.iterdir()):
        problem = wheel_problem(wheel.name, builder_glibc=builder.glibc)
        if problem is not None:
            name = wheel.name.split("-")[0]
            raise BadInput(
                f"wheelhouse/{wheel.name}: {problem}",
                hint=f"pin a version of {name} that publishes a cp311 manylinux or pure-Python "
                f"(py3-none-any) wheel in [project] dependencies of {pyproject}",
            )
        name, version, _, _ = parse_wheel_filename(wheel.name)
        present[name] = str(version)
    needed = {"gunicorn": f"the nodes serve {contract.wsgi} with gunicorn"}
    if contract.worker:
        needed["celery"] = f"the workers run `celery -A {contract.worker} worker`"
    for dependency, why in needed.items():
        if dependency not in present:
            raise BadInput(
                f"{pyproject}: [project] dependencies lack {dependency}: {why}, and nodes "
                "install only from the release's wheelhouse",
                hint=f'add "{dependency}" to [project] dependencies',
            )
    app = canonicalize_name(project)
    if app not in present:
        raise BuildError(f"pip wheel made no wheel for {project} in {wheelhouse}")
    return f"{project}=={present[app]}"


_IN_VENV = """
import importlib, importlib.util, json, pathlib, sys, traceback
args = json.loads(sys.argv[1])
for key, entry in args["entry_points"]:
    module = entry.partition(":")[0]
    try:
        found = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        found = None
    except Exception:
        traceback.print_exc()
        print(f"{key} = {entry!r}: importing the package of {module} failed")
        sys.exit(4)
    if found is None:
        print(f"{key} = {entry!r}: module {module} is not in the installed application")
        sys.exit(3)
if args["bake"]:
    module, _, attribute = args["bake"].partition(":")
    target = importlib.import_module(module)
    for part in attribute.split("."):
        target = getattr(target, part)
    target(pathlib.Path(args["out"]))
"""


def _uv() -> str:
    try:
        return str(find_uv_bin())
    except FileNotFoundError as error:
        raise BuildError(
            f"uv is not where its package says: {error}",
            hint="reinstall deploykit's dependencies (make venv)",
        ) from error


def _wheels_for_nodes(wheelhouse: Path, requirement: str, work: Path) -> list[str]:
    """The wheels of WHEELHOUSE a node installs for REQUIREMENT, by file name: uv resolves it from
    the wheelhouse alone for the nodes' interpreter and platform (TARGET_*), so that the stage
    module installs exactly these with pypa/installer, with no resolver of its own."""
    (work / "nodes.in").write_text(requirement + "\n", encoding="utf-8")
    platform = f"{TARGET_ARCH}-manylinux_{TARGET_GLIBC[0]}_{TARGET_GLIBC[1]}"
    compile_ = [_uv(), "pip", "compile", "--quiet", "--no-config", "--offline", "--no-cache",
                "--no-index", "--find-links", str(wheelhouse), "--no-header", "--no-annotate",
                "--python-version", TARGET_MARKER_ENVIRONMENT["python_full_version"],
                "--python-platform", platform, str(work / "nodes.in")]  # fmt: skip
    proc = _run(compile_, env=_offline_env())
    if proc.returncode != 0:
        raise BuildError(
            f"the wheelhouse does not resolve {requirement} for the nodes ({TARGET_DESCRIPTION}):"
            f"\n    {_tail(proc.stdout + proc.stderr)}"
        )
    by_name: dict[str, list[tuple[str, str]]] = {}
    for wheel in wheelhouse.glob("*.whl"):
        name, version, _, _ = parse_wheel_filename(wheel.name)
        by_name.setdefault(name, []).append((str(version), wheel.name))
    chosen: list[str] = []
    for line in proc.stdout.splitlines():
        pin = Requirement(line) if "==" in line and not line.startswith(("#", "-")) else None
        if pin is None:
            continue
        matches = [f for v, f in by_name.get(canonicalize_name(pin.name), []) if v in pin.specifier]
        if len(matches) != 1:
            raise BuildError(
                f"the nodes' resolution pins {line.strip()}, which {len(matches)} wheel(s) of "
                "the wheelhouse match (one expected)"
            )
        chosen.extend(matches)
    return sorted(chosen)


def _install_offline(builder: _Builder, wheelhouse: Path, requirement: str, work: Path) -> Path:
    """A throwaway virtualenv with the app installed from the wheelhouse alone; its python.

    It proves that the wheelhouse is complete and that the app imports, and the bake runs in it.
    uv (a dependency of deploykit) makes it in under a second where pip took four to five: the
    venv is thrown away. The nodes install what _wheels_for_nodes resolves for them (the stage
    module), which refuses a wheel the manifest does not verify before anything live changes."""
    venv = work / "venv"
    python = venv / "bin" / "python"
    uv = _uv()
    create = [uv, "venv", "--quiet", "--no-config", "--no-python-downloads",
              "--python", builder.python, str(venv)]  # fmt: skip
    proc = _run(create, env=_offline_env())
    if proc.returncode != 0:
        raise BuildError(f"uv venv failed (exit {proc.returncode}):\n    {_tail(proc.stderr)}")
    install = [uv, "pip", "install", "--quiet", "--no-config", "--python", str(python),
               "--offline", "--no-cache", "--no-index", "--find-links", str(wheelhouse),
               requirement]  # fmt: skip
    proc = _run(install, env=_offline_env())
    if proc.returncode != 0:
        raise BuildError(
            f"the wheelhouse is incomplete: installing {requirement} offline failed:\n    "
            f"{_tail(proc.stdout + proc.stderr)}",
            hint="a dependency may be missing a wheel for the nodes' platform",
        )
    return python


def _check_and_bake(
    python: Path,
    *,
    contract: AppContract,
    pyproject: Path,
    release_id: str,
    baked: Path | None,
    work: Path,
) -> None:
    """Import-check the contract's modules in the offline virtualenv and run bake, with no
    services and a clean environment (the controller's variables do not leak into pages)."""
    entry_points = [("wsgi", contract.wsgi)]
    if contract.worker:
        entry_points.append(("worker", contract.worker))
    if contract.bake:
        entry_points.append(("bake", contract.bake))
    if contract.migrate:
        entry_points.append(("migrate", contract.migrate))
    args = {
        "entry_points": entry_points,
        "bake": contract.bake if baked is not None else None,
        "out": str(baked) if baked is not None else None,
    }
    home = work / "home"
    cwd = work / "run"
    home.mkdir()
    cwd.mkdir()
    env = {
        "PATH": f"{python.parent}{os.pathsep}/usr/local/bin{os.pathsep}/usr/bin{os.pathsep}/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "TZ": "UTC",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH),
        "DEPLOYKIT_RELEASE_ID": release_id,
    }
    if baked is not None:
        baked.mkdir()
    proc = _run([str(python), "-c", _IN_VENV, json.dumps(args)], env=env, cwd=cwd, timeout=900)
    if proc.returncode == 3:
        raise BadInput(
            f"{pyproject} [tool.deploykit]: {_last_line(proc.stdout)}",
            hint="check the packages your build backend puts in the wheel "
            "(e.g. [tool.setuptools.packages.find])",
        )
    if proc.returncode == 4:
        raise BuildError(
            f"{pyproject} [tool.deploykit]: {_last_line(proc.stdout)} in the offline virtualenv:"
            f"\n    {_tail(proc.stderr)}",
            hint="importing the application must not need services or settings",
        )
    if proc.returncode != 0:
        raise BuildError(
            f"bake {contract.bake} failed (exit {proc.returncode}) in the offline "
            f"virtualenv:\n    {_tail(proc.stdout + proc.stderr)}",
            hint="bake runs at build time with no services and only DEPLOYKIT_RELEASE_ID set",
        )
    if baked is not None and not any(p.is_file() for p in baked.rglob("*")):
        raise BuildError(
            f"bake {contract.bake} wrote no files into its out_dir",
            hint="bake(out_dir) must write the pre-rendered pages, e.g. out_dir / 'index.html'",
        )


def _stage_entries(stage: Path) -> tuple[list[str], dict[str, str], dict[str, int]]:
    """Directories, {file: sha256} and {file: mode} of the staged tree, as sorted POSIX paths."""
    directories: list[str] = []
    files: dict[str, str] = {}
    modes: dict[str, int] = {}
    for directory, dirnames, filenames in os.walk(stage):
        here = Path(directory)
        dirnames.sort()
        for dirname in dirnames:
            path = here / dirname
            if path.is_symlink():
                raise BuildError(f"{path.relative_to(stage)}: a symbolic link in the release")
            directories.append(path.relative_to(stage).as_posix())
        for filename in filenames:
            path = here / filename
            relative = path.relative_to(stage).as_posix()
            mode = path.lstat().st_mode
            if not stat.S_ISREG(mode):
                raise BuildError(f"{relative}: not a regular file (bake must write plain files)")
            files[relative] = _sha256_file(path)
            modes[relative] = _normal_mode(mode)
    return sorted(directories), dict(sorted(files.items())), modes


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tarinfo(name: str, *, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.mtime = SOURCE_DATE_EPOCH
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _write_archive(
    stage: Path,
    manifest_bytes: bytes,
    directories: list[str],
    modes: Mapping[str, int],
    dest: Path,
) -> None:
    """A byte-for-byte reproducible tar.gz: manifest.json first, then sorted entries."""
    partial = dest.with_name(dest.name + ".partial")
    entries = sorted([(d, True) for d in directories] + [(f, False) for f in modes])
    try:
        with (
            partial.open("wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as compressed,
            tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            info = _tarinfo(
                MANIFEST_NAME, kind=tarfile.REGTYPE, mode=0o644, size=len(manifest_bytes)
            )
            tar.addfile(info, _BytesReader(manifest_bytes))
            for name, is_dir in entries:
                if is_dir:
                    tar.addfile(_tarinfo(name, kind=tarfile.DIRTYPE, mode=0o755))
                    continue
                path = stage / name
                info = _tarinfo(
                    name, kind=tarfile.REGTYPE, mode=modes[name], size=path.stat().st_size
                )
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
        partial.replace(dest)
    finally:
        partial.unlink(missing_ok=True)


class _BytesReader:
    """The file-like object tarfile.addfile reads (only ``read`` is used)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._offset = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size < 0 else self._offset + size
        chunk = self._data[self._offset : end]
        self._offset += len(chunk)
        return chunk


def _release_version(pyproject: Path, given: str | None, declared: str | None) -> str:
    version = given if given is not None else declared
    if version is None:
        raise BadInput(
            f"{pyproject}: [project] has no static version: set [project] version or give the "
            "release a version explicitly"
        )
    if not _VERSION_RE.match(version):
        raise BadInput(
            f"version {version!r}: use letters, digits, '.', '+', '_' and '-' (at most 64, "
            "starting with a letter or digit): it names the release directory on the nodes"
        )
    return version


# --- release ids ----------------------------------------------------------------------------

#: A release id is ``<version>-<the first RELEASE_HASH_CHARS hex digits of the source hash>``.
RELEASE_HASH_CHARS = 12
_RELEASE_ID_RE = re.compile(rf"(?P<version>.+)-(?P<hash>[0-9a-f]{{{RELEASE_HASH_CHARS}}})\Z")
#: The short form keeps as much of the hash as git's short ids: enough to tell apart the few
#: releases a fleet keeps, where the whole id would not fit an 80-column table.
SHORT_HASH_CHARS = 7
SHORT_VERSION_CHARS = 12


def release_id_for(version: str, source_sha256: str) -> str:
    """The release id of ``version`` built from the source whose hash is ``source_sha256``."""
    return f"{version}-{source_sha256[:RELEASE_HASH_CHARS]}"


def short_release_id(release_id: str, app: str | None = None) -> str:
    """The release id as the command line's tables show it, on one line at 80 columns.

    ``shop-1.0.4-rc.1+build.7-da107a5af7e7`` in a table about ``app`` shop is
    ``1.0.4-rc.1-da107a5``. The hash tells builds apart, so the version keeps only what a reader
    recognises: without the application's name (the table states it once), without the build
    metadata after '+' (which orders nothing; two versions that differ only there, built from one
    source, share the short form) and past SHORT_VERSION_CHARS its start and end around '…'. The
    whole id is in each command's --json. An id of another form is shown whole."""
    match = _RELEASE_ID_RE.match(release_id)
    if match is None:
        return release_id
    version = match["version"]
    if app is not None and version.startswith(f"{app}-") and len(version) > len(app) + 1:
        version = version[len(app) + 1 :]
    # A version starts with a letter or digit (_VERSION_RE), so something is left before '+'.
    version = version.split("+", 1)[0] or version
    if len(version) > SHORT_VERSION_CHARS:
        head = (SHORT_VERSION_CHARS - 1) // 2
        tail = SHORT_VERSION_CHARS - 1 - head
        version = f"{version[:head]}…{version[-tail:]}"
    return f"{version}-{match['hash'][:SHORT_HASH_CHARS]}"


def build(
    app_dir: Path,
    *,
    version: str | None = None,
    out_dir: Path,
    log: Log = print,
    python: str = sys.executable,
) -> Artifact:
    """Build ``<out_dir>/<name>-<release id>.tar.gz`` from the application in ``app_dir``.

    The release id is ``<version>-<first 12 hex of the source hash>``; ``version`` defaults to
    the project's [project] version. ``python`` builds the wheels: a CPython 3.11 on Linux x86_64,
    the nodes' kind. Raises BadInput for what the user must change in the application, and
    BuildError when a tool fails."""
    contract = load_contract(app_dir)
    root = contract.root
    pyproject, project, project_version = _project_metadata(root)
    version = _release_version(pyproject, version, project_version)
    out_dir = out_dir.resolve()
    builder = _inspect_python(python)

    files = source_files(root, exclude=[out_dir])
    if not files:
        raise BadInput(f"{root}: no source files")
    digest = source_hash(root, files)
    release_id = release_id_for(version, digest)
    revision, dirty = _git_revision(root)
    where = f"git {revision[:12]}{' (dirty)' if dirty else ''}" if revision else "not in git"
    log(f"{contract.name} {release_id}: {len(files)} source files from {root} ({where})")

    with tempfile.TemporaryDirectory(prefix="deploykit-build-") as temporary:
        work = Path(temporary)
        stage = work / "artifact"
        _copy_files(root, files, stage / "source")
        # pip builds in the tree it is given (setuptools writes build/ and *.egg-info there):
        # give it a copy, so neither the application nor source/ gains build output.
        build_tree = work / "build-tree"
        _copy_files(root, files, build_tree)

        log(f"wheels: pip wheel {project} and its dependencies ({TARGET_DESCRIPTION})")
        wheelhouse = stage / "wheelhouse"
        _pip_wheel(builder, build_tree, wheelhouse, pyproject)
        _complete_for_nodes(builder, wheelhouse, log)
        requirement = _check_wheelhouse(wheelhouse, builder, contract, pyproject, project)
        wheels = sorted(wheelhouse.iterdir())
        log(
            f"wheelhouse: {len(wheels)} wheels, "
            f"{_human(sum(w.stat().st_size for w in wheels))}, all fit {TARGET_PLATFORM}"
        )

        venv_python = _install_offline(builder, wheelhouse, requirement, work)
        log(f"offline install of {requirement} from the wheelhouse: ok")
        for_nodes = _wheels_for_nodes(wheelhouse, requirement, work)
        baked = stage / "baked" if contract.bake else None
        _check_and_bake(
            venv_python,
            contract=contract,
            pyproject=pyproject,
            release_id=release_id,
            baked=baked,
            work=work,
        )
        if baked is not None:
            pages = sum(1 for p in baked.rglob("*") if p.is_file())
            log(f"bake {contract.bake}: {pages} page(s)")

        directories, hashes, modes = _stage_entries(stage)
        manifest: dict[str, Any] = {
            "format": ARTIFACT_FORMAT,
            "name": contract.name,
            "project": project,
            "version": version,
            "release_id": release_id,
            "requirement": requirement,
            # What the stage installs on a node without a seed, resolved here (not on the nodes).
            "install": for_nodes,
            "source": {"sha256": digest, "revision": revision, "dirty": dirty},
            "python": TARGET_PYTHON,
            "platform": TARGET_PLATFORM,
            "contract": {k: v for k, v in contract.to_dict().items() if k != "name"},
            "files": hashes,
            "checksum": files_checksum(hashes),
        }
        manifest_bytes = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / artifact_filename(contract.name, release_id)
        _write_archive(stage, manifest_bytes, directories, modes, path)

    size = path.stat().st_size
    log(f"artifact: {path} ({_human(size)}, checksum {manifest['checksum'][:12]})")
    return Artifact(path=path, release_id=release_id, manifest=manifest, size=size)


# --- verifying ------------------------------------------------------------------------------


def verify(artifact: Path) -> dict[str, Any]:
    """Reopen an artifact and check it against its manifest: a .tar.gz with manifest.json first
    and every path inside the release, only files and directories with plain modes, every file's
    sha256, the files list's checksum, the fields a deploy reads (name, release_id, contract)
    (deploykit.fleet's :func:`verify_artifact`, the one implementation the nodes run too), then
    the platform (manifest and every wheel). Returns the manifest; raises BadInput naming the
    first bad file."""
    try:
        manifest = verify_artifact(str(artifact))
    except ReleaseProblem as problem:
        raise BadInput(str(problem), hint=problem.hint) from None
    built_for = (manifest.get("python"), manifest.get("platform"))
    if built_for != (TARGET_PYTHON, TARGET_PLATFORM):
        raise BadInput(
            f"{artifact}: {MANIFEST_NAME}: built for {built_for[0]} on {built_for[1]}; the "
            f"nodes need {TARGET_PYTHON} on {TARGET_PLATFORM} ({TARGET_DESCRIPTION})",
            hint="rebuild it with deploykit build on a CPython 3.11 Linux x86_64 controller",
        )
    for name in manifest["files"]:
        if name.startswith("wheelhouse/"):
            wrong = wheel_problem(PurePosixPath(name).name)
            if wrong is not None:
                raise BadInput(f"{artifact}: {name}: {wrong}")
    return dict(manifest)
