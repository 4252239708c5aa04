"""A catalogue of malformed inputs, each refused by the real command line before anything changes.

Every entry runs ``python -m deploykit ...`` in a process of its own from the repository root, as a
user would (the real roles' argument specs, the real ansible.cfg, the real console output; the
process is forked from one that has imported the command line once, forked_cli.py), and asserts
exit code 2 (bad input) and that the output names what to fix: the group, host, variable, key or
file, and the form expected instead. The four kinds of input a user gives deploykit:

- inventories and role variables: ``deploykit check -i FILE``;
- the application contract (``[tool.deploykit]``): ``deploykit build --app DIR``, which must stop
  before it writes anything;
- release artifacts: ``deploykit verify FILE``, derived from one real build of
  tests/fixtures/minimal_app with one thing broken in each;
- and ``deploykit deploy --artifact BAD -i INVENTORY`` against hosts that do not exist (TEST-NET-1,
  192.0.2.0/24): refused in seconds with nothing but the error printed, so no playbook ran and no
  connection was attempted.

test_inventory.py and test_release.py check the exact messages of the core functions; this file
checks what reaches the user through the command line.
"""

from __future__ import annotations

import atexit
import copy
import hashlib
import io
import json
import os
import tarfile
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from forked_cli import ForkedCli

from deploykit.release import files_checksum

REPO = Path(__file__).resolve().parents[2]
MINIMAL_APP = REPO / "tests" / "fixtures" / "minimal_app"

# What a playbook run prints (the runner's progress display, Ansible's own lines, the rollout's
# log): none of it may appear when the input is refused up front.
RUN_MARKERS = ("PLAY [", "TASK [", "UNREACHABLE", "fatal:", "ok: [", "changed: [", "staging ")


# --- running the command line ------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    output: str  # stdout then stderr, as the user's terminal shows them
    seconds: float

    @property
    def text(self) -> str:
        """The output with whitespace collapsed: a message is matched whatever its wrapping."""
        return " ".join(self.output.split())


_CLI: ForkedCli | None = None


def deploykit(*args: str, timeout: float = 120) -> Run:
    """``python -m deploykit ARGS`` from the repository root, in a process of its own (forked from
    one that has imported the command line once: forked_cli.py)."""
    global _CLI  # noqa: PLW0603 - one server for the whole module, started on first use
    if _CLI is None:
        env = dict(os.environ)
        # The project is found from the working directory (the repository root), as for a user.
        env.pop("DEPLOYKIT_PROJECT", None)
        # rich wraps at the terminal's width (80 without a terminal); one line per message instead.
        env["COLUMNS"] = "1000"
        _CLI = ForkedCli(REPO, env)
        atexit.register(_CLI.close)
    with tempfile.TemporaryDirectory(prefix="deploykit-cli-") as streams:
        out, err = Path(streams, "stdout"), Path(streams, "stderr")
        started = time.monotonic()
        returncode = _CLI.run(list(args), out, err, timeout)
        seconds = time.monotonic() - started
        stdout = out.read_text(encoding="utf-8", errors="replace")
        stderr = err.read_text(encoding="utf-8", errors="replace")
    return Run(returncode, stdout, stdout + stderr, seconds)


def assert_refused(run: Run, expected: Iterable[str]) -> None:
    """Exit 2, no traceback, and every expected phrase in the output."""
    assert run.returncode == 2, run.output
    assert "Traceback" not in run.output, run.output
    for phrase in expected:
        assert " ".join(phrase.split()) in run.text, f"{phrase!r} is not in:\n{run.output}"


# --- inputs: a valid inventory of hosts that do not exist ---------------------------------------

# One host per group (two clones), at TEST-NET-1 addresses (RFC 5737): valid, and never reachable.
TESTNET_HOSTS: dict[str, dict[str, dict[str, Any]]] = {
    "lb": {"lb1": {"ansible_host": "192.0.2.10"}},
    "app": {"app1": {"ansible_host": "192.0.2.20"}, "app2": {"ansible_host": "192.0.2.21"}},
    "worker": {"worker1": {"ansible_host": "192.0.2.30"}},
    "cache": {"cache1": {"ansible_host": "192.0.2.40"}},
    "docstore": {"db1": {"ansible_host": "192.0.2.50"}},
    "queue": {"queue1": {"ansible_host": "192.0.2.60"}},
}


def inventory_yaml(
    hosts: dict[str, dict[str, dict[str, Any]]] | None = None,
    *,
    omit: str | None = None,
    group_vars: dict[str, dict[str, Any]] | None = None,
    ungrouped: dict[str, dict[str, Any]] | None = None,
) -> str:
    """The TEST-NET inventory as YAML, with ``hosts`` groups replaced or added, ``omit`` left out,
    ``group_vars`` set in the groups, and ``ungrouped`` hosts directly under 'all'."""
    groups = copy.deepcopy(TESTNET_HOSTS)
    groups.update(hosts or {})
    groups.pop(omit or "", None)
    children: dict[str, Any] = {}
    for group, members in groups.items():
        children[group] = {"hosts": members}
        if group_vars and group in group_vars:
            children[group]["vars"] = group_vars[group]
    document: dict[str, Any] = {"all": {"children": children}}
    if ungrouped:
        document["all"]["hosts"] = ungrouped
    return yaml.safe_dump(document, sort_keys=False)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --- inputs: artifacts derived from a real build -----------------------------------------------


@pytest.fixture(scope="session")
def good_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real release of tests/fixtures/minimal_app, built once (about 10 s)."""
    out = tmp_path_factory.mktemp("artifact")
    run = deploykit("build", "--app", str(MINIMAL_APP), "--out", str(out), "--json", timeout=600)
    assert run.returncode == 0, run.output
    return Path(json.loads(run.stdout)["path"])


class Archive:
    """An artifact's members, in archive order, to break one thing in and write back as .tar.gz.

    The layout is the one deploykit build writes: manifest.json first, then source/, wheelhouse/
    and baked/ (directories and files, sorted)."""

    def __init__(self, path: Path) -> None:
        with tarfile.open(path, "r:gz") as tar:
            self.members: list[tuple[tarfile.TarInfo, bytes | None]] = [
                (member, tar.extractfile(member).read() if member.isfile() else None)  # type: ignore[union-attr]
                for member in tar
            ]
        assert self.members[0][0].name == "manifest.json"

    @property
    def manifest(self) -> dict[str, Any]:
        data = self.members[0][1]
        assert data is not None
        result: dict[str, Any] = json.loads(data)
        return result

    def set_manifest(self, manifest: dict[str, Any], *, resign: bool = True) -> None:
        """Replace manifest.json; ``resign``: recompute its checksum, as a careful forger would,
        so that only the intended mistake is left for verify to find."""
        if resign:
            manifest["checksum"] = files_checksum(manifest["files"])
        self._replace("manifest.json", json.dumps(manifest, indent=2, sort_keys=True).encode())

    def add(
        self,
        name: str,
        data: bytes = b"",
        *,
        listed: bool = True,
        kind: bytes = tarfile.REGTYPE,
        linkname: str = "",
        mode: int = 0o644,
    ) -> None:
        """Append a member; ``listed``: also list it in the manifest with its true sha256."""
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = linkname
        info.mode = mode
        self.members.append((info, data if kind == tarfile.REGTYPE else None))
        if listed:
            manifest = self.manifest
            manifest["files"][name] = hashlib.sha256(data).hexdigest()
            self.set_manifest(manifest)

    def flip_byte(self, name: str) -> None:
        """Change one byte of a file, leaving the manifest as built."""
        data = self._data(name)
        self._replace(name, data[:-1] + bytes([data[-1] ^ 0x01]))

    def move_to_end(self, name: str) -> None:
        index = next(i for i, (m, _) in enumerate(self.members) if m.name == name)
        self.members.append(self.members.pop(index))

    def write(self, dest: Path) -> Path:
        with tarfile.open(dest, "w:gz", format=tarfile.PAX_FORMAT) as tar:
            for info, data in self.members:
                if data is None:
                    tar.addfile(info)
                else:
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        return dest

    def _data(self, name: str) -> bytes:
        data = next(d for m, d in self.members if m.name == name)
        assert data is not None
        return data

    def _replace(self, name: str, data: bytes) -> None:
        self.members = [(copy.copy(m), data) if m.name == name else (m, d) for m, d in self.members]


# --- the catalogue -------------------------------------------------------------------------------

# Each entry: a maker that writes the malformed input under tmp_path (given the path of a good
# artifact) and returns the command line, and the phrases the output must contain. "{tmp}" in a
# phrase stands for tmp_path.
Maker = Callable[[Path, Path], list[str]]


def check(text: str, *, name: str = "hosts.yml", extra: dict[str, str] | None = None) -> Maker:
    """`deploykit check -i` on an inventory file (and extra files next to it)."""

    def make(tmp: Path, _: Path) -> list[str]:
        for relative, content in (extra or {}).items():
            write(tmp / "inventory" / relative, content)
        return ["check", "-i", str(write(tmp / "inventory" / name, text))]

    return make


# The application contract as the tests of release.py write it: the smallest valid one.
CONTRACT = """\
[project]
name = "shop"
version = "1.0.0"
dependencies = ["gunicorn"]

[tool.deploykit]
name = "shop"
wsgi = "shop.web:app"
health_path = "/healthz"
"""


def contract(pyproject: str | None) -> Maker:
    """`deploykit build --app` on an application whose pyproject.toml is ``pyproject`` (None: the
    directory has none)."""

    def make(tmp: Path, _: Path) -> list[str]:
        app = tmp / "app"
        app.mkdir()
        if pyproject is not None:
            write(app / "pyproject.toml", textwrap.dedent(pyproject))
        return ["build", "--app", str(app), "--out", str(tmp / "out")]

    return make


def edited(line: str, new: str | None) -> str:
    """CONTRACT with ``line`` replaced by ``new`` (None: removed)."""
    lines = CONTRACT.splitlines()
    assert line in lines, line
    kept = [entry for entry in lines if entry != line] if new is None else lines
    return "\n".join(new if entry == line else entry for entry in kept) + "\n"


def artifact(change: Callable[[Archive], None]) -> Maker:
    """`deploykit verify` on a copy of the good artifact with ``change`` applied."""

    def make(tmp: Path, good: Path) -> list[str]:
        archive = Archive(good)
        change(archive)
        return ["verify", str(archive.write(tmp / "bad.tar.gz"))]

    return make


def raw_file(content: Callable[[bytes], bytes]) -> Maker:
    """`deploykit verify` on a file made from the good artifact's bytes."""

    def make(tmp: Path, good: Path) -> list[str]:
        bad = tmp / "bad.tar.gz"
        bad.write_bytes(content(good.read_bytes()))
        return ["verify", str(bad)]

    return make


def _edit_manifest(edit: Callable[[dict[str, Any]], None], *, resign: bool = True) -> Any:
    def change(archive: Archive) -> None:
        manifest = archive.manifest
        edit(manifest)
        archive.set_manifest(manifest, resign=resign)

    return change


def _uncompressed_tar(data: bytes) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as source:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as tar:
            for member in source:
                tar.addfile(member, source.extractfile(member) if member.isfile() else None)
    return out.getvalue()


ALL_GROUPS = "lb, app, worker, cache, docstore, queue"
WEB_PY = "source/src/minimal/web.py"
NODES = "which the nodes (Debian 12, CPython 3.11, x86_64) cannot install"
REBUILD = "rebuild the artifact with deploykit build"

CATALOGUE: list[Any] = [
    # --- inventories ---------------------------------------------------------------------------
    pytest.param(
        check(
            inventory_yaml({"wokrer": TESTNET_HOSTS["worker"]}, omit="worker"),
        ),
        [
            "group 'wokrer': not a deploykit group (did you mean 'worker'?); rename it",
            "group 'worker': missing or empty; add at least one host under it",
        ],
        id="inventory-misspelt-group",
    ),
    pytest.param(
        check(inventory_yaml({"lb": {"lb1": {"ansible_host": "lb1.example.com:2222"}}})),
        [
            "host 'lb1': ansible_host 'lb1.example.com:2222' is neither an IP address nor a "
            "valid hostname",
            "set it to the host's IP address or DNS name",
        ],
        id="inventory-ansible-host-with-a-port",
    ),
    pytest.param(
        check(inventory_yaml({"app": {"app1": {"ansible_host": "192.0.2.256"}}})),
        [
            "host 'app1': ansible_host '192.0.2.256' is not a valid IPv4 address; set it to the "
            "host's IP address or DNS name"
        ],
        id="inventory-ansible-host-bad-ipv4",
    ),
    pytest.param(
        check(inventory_yaml(omit="cache")),
        [
            "group 'cache': missing or empty; add at least one host under it (Redis, for "
            "sessions and cached objects)"
        ],
        id="inventory-missing-required-group",
    ),
    pytest.param(
        check("all:\n  children:\n    lb: {hosts: {lb1: {ansible_host: 192.0.2.10}}\n"),
        [
            "inventory '{tmp}/inventory/hosts.yml': cannot be parsed as an inventory",
            "fix the YAML syntax",
        ],
        id="inventory-yaml-does-not-parse",
    ),
    pytest.param(
        check(inventory_yaml(ungrouped={"monitor1": {"ansible_host": "192.0.2.70"}})),
        [
            "host 'monitor1': is in no deploykit group, so no role would run on it; add it to "
            f"one of {ALL_GROUPS}, or remove it"
        ],
        id="inventory-host-in-no-deploykit-group",
    ),
    pytest.param(
        check(
            inventory_yaml(
                {
                    "app": {
                        "app1": {"ansible_host": "192.0.2.20"},
                        "app2": {"ansible_host": "192.0.2.20"},
                    }
                }
            )
        ),
        [
            "host 'app2': has the same address as host 'app1' (192.0.2.20, port 22) in group "
            "'app'; give each host its own ansible_host"
        ],
        id="inventory-two-clones-one-address",
    ),
    pytest.param(
        lambda tmp, _: ["check", "-i", str(tmp / "nowhere.yml")],
        ["inventory '{tmp}/nowhere.yml': does not exist; pass an inventory with -i"],
        id="inventory-file-missing",
    ),
    # --- role variables, checked against roles/*/meta/argument_specs.yml ------------------------
    pytest.param(
        check(inventory_yaml(group_vars={"lb": {"haproxy_http_port": "eighty"}})),
        [
            "variable 'haproxy_http_port' (group 'lb'): expected an integer, got 'eighty'; set a "
            "port number such as 80"
        ],
        id="variable-port-as-text",
    ),
    pytest.param(
        check(inventory_yaml(group_vars={"lb": {"haproxy_http_port": 80000}})),
        [
            "variable 'haproxy_http_port' (group 'lb'): expected a port number from 1 to 65535, "
            "got 80000"
        ],
        id="variable-port-out-of-range",
    ),
    pytest.param(
        check(inventory_yaml(group_vars={"cache": {"redis_maxmemroy": "512mb"}})),
        [
            "variable 'redis_maxmemroy' (group 'cache'): unknown variable (did you mean "
            "'redis_maxmemory'?)",
            "fix the name or remove it",
        ],
        id="variable-unknown-did-you-mean",
    ),
    pytest.param(
        check(inventory_yaml(group_vars={"app": {"common_extra_packages": {"htop": "latest"}}})),
        [
            "variable 'common_extra_packages' (group 'app'): expected a list, got a mapping; "
            "write it as a YAML list, one '- item' a line"
        ],
        id="variable-list-given-a-mapping",
    ),
    pytest.param(
        check(inventory_yaml(group_vars={"lb": {"haproxy_tls_redirect": "sometimes"}})),
        [
            "variable 'haproxy_tls_redirect' (group 'lb'): expected a boolean, got 'sometimes'; "
            "set true or false"
        ],
        id="variable-bool-given-a-word",
    ),
    pytest.param(
        check(inventory_yaml(group_vars={"cache": {"redis_maxmemory_policy": "allkeys-lru"}})),
        [
            "variable 'redis_maxmemory_policy' (group 'cache'): expected one of 'volatile-lru',",
            "got 'allkeys-lru'; did you mean 'volatile-lru'?",
        ],
        id="variable-choice-that-would-evict-sessions",
    ),
    pytest.param(
        check(
            inventory_yaml(),
            extra={"host_vars/app1.yml": "deploykit_private_address: app1.internal\n"},
        ),
        [
            "variable 'deploykit_private_address' (host 'app1', host_vars/app1.yml): expected an "
            "IPv4 or IPv6 address, got 'app1.internal'"
        ],
        id="variable-private-address-not-an-ip",
    ),
    pytest.param(
        check(inventory_yaml(), extra={"group_vars/app.yml": "app_workers: four\n"}),
        [
            "variable 'app_workers' (group 'app', group_vars/app.yml): expected an integer, got "
            "'four'; set a whole number such as 2"
        ],
        id="variable-int-in-group-vars-file",
    ),
    # --- the application contract: [tool.deploykit] ---------------------------------------------
    pytest.param(
        contract("[project]\nname = 'shop'\nversion = '1.0.0'\n"),
        # "no [tool.deploykit] table": the console drops the brackets' words (see
        # test_contract_errors_name_the_table), so the phrases around them are checked.
        [
            "{tmp}/app/pyproject.toml: no",
            'table: declare the application\'s name, wsgi and health_path, e.g. name = "shop", '
            'wsgi = "shop.web:app", health_path = "/healthz"',
        ],
        id="contract-no-tool-deploykit-table",
    ),
    pytest.param(
        contract(None),
        ["{tmp}/app: no pyproject.toml: an application is a Python project that declares itself"],
        id="contract-no-pyproject",
    ),
    pytest.param(
        contract(CONTRACT.replace("[tool.deploykit]", "[tool.deploykit")),
        ["{tmp}/app/pyproject.toml: not valid TOML"],
        id="contract-toml-does-not-parse",
    ),
    pytest.param(
        contract(edited('wsgi = "shop.web:app"', None)),
        ['wsgi is required, e.g. wsgi = "shop.web:app"'],
        id="contract-missing-wsgi",
    ),
    pytest.param(
        contract(edited('wsgi = "shop.web:app"', 'wsgi = "shop.web"')),
        [
            "wsgi = 'shop.web': give the WSGI application as module:attribute, e.g. "
            'wsgi = "shop.web:app"'
        ],
        id="contract-entry-point-without-colon",
    ),
    pytest.param(
        contract(CONTRACT + 'worker = "shop/jobs.py:celery_app"\n'),
        ["worker = 'shop/jobs.py:celery_app': give the Celery application as module:attribute"],
        id="contract-worker-is-a-file-path",
    ),
    pytest.param(
        contract(edited('health_path = "/healthz"', 'health_url = "/healthz"')),
        [
            "unknown key 'health_url' (did you mean 'health_path'?): the keys are name, wsgi, "
            "health_path, live_path, worker, bake, migrate, settings"
        ],
        id="contract-unknown-key",
    ),
    pytest.param(
        contract(edited('health_path = "/healthz"', 'health_path = "healthz"')),
        [
            "health_path = 'healthz': give a URL path starting with / (no spaces, query or "
            'fragment), e.g. health_path = "/healthz"'
        ],
        id="contract-health-path-without-slash",
    ),
    pytest.param(
        contract(CONTRACT + 'settings = "SECRET_KEY,REDIS_URL"\n'),
        [
            "settings = 'SECRET_KEY,REDIS_URL': give a list of UPPER_CASE environment variable "
            'names, e.g. settings = ["SECRET_KEY", "REDIS_URL"]'
        ],
        id="contract-settings-not-a-list",
    ),
    pytest.param(
        contract(edited('name = "shop"', 'name = "Shop_App"')),
        ["name = 'Shop_App': use lowercase letters, digits and '-', starting with a letter"],
        id="contract-name-not-lowercase",
    ),
    # --- release artifacts -----------------------------------------------------------------------
    pytest.param(
        raw_file(lambda data: data[: len(data) * 6 // 10]),
        [
            "{tmp}/bad.tar.gz: the archive is truncated or corrupt (in ",
            "hint: copy it again, or rebuild it with deploykit build",
        ],
        id="artifact-truncated",
    ),
    pytest.param(
        raw_file(lambda _: b""),
        [
            "{tmp}/bad.tar.gz: an empty file, not a release: give the .tar.gz that deploykit "
            "build wrote"
        ],
        id="artifact-empty-file",
    ),
    pytest.param(
        raw_file(lambda _: b"<html>404 Not Found</html>\n"),
        [
            "{tmp}/bad.tar.gz: not a gzip-compressed tar archive (.tar.gz), so not a release: "
            "give the .tar.gz that deploykit build wrote"
        ],
        id="artifact-not-gzip",
    ),
    pytest.param(
        raw_file(_uncompressed_tar),
        ["{tmp}/bad.tar.gz: not a gzip-compressed tar archive (.tar.gz)"],
        id="artifact-tar-without-gzip",
    ),
    pytest.param(
        lambda tmp, _: ["verify", str(tmp / "missing.tar.gz")],
        ["{tmp}/missing.tar.gz: no such file: give the path of a built release (.tar.gz)"],
        id="artifact-missing",
    ),
    pytest.param(
        artifact(lambda archive: archive.flip_byte(WEB_PY)),
        [
            f"{{tmp}}/bad.tar.gz: {WEB_PY}: sha256 differs from manifest.json (changed after "
            "the build)",
            REBUILD,
        ],
        id="artifact-one-byte-changed",
    ),
    pytest.param(
        artifact(_edit_manifest(lambda m: m.update(checksum="0" * 64), resign=False)),
        [
            "{tmp}/bad.tar.gz: manifest.json: its checksum does not match its files list (the "
            "manifest was edited after the build)"
        ],
        id="artifact-manifest-checksum-wrong",
    ),
    pytest.param(
        artifact(lambda archive: archive.add("../x", b"outside\n")),
        ["{tmp}/bad.tar.gz: '../x': a path outside the release (absolute, or with '..')", REBUILD],
        id="artifact-path-escaping-the-root",
    ),
    pytest.param(
        artifact(lambda archive: archive.add("/etc/cron.d/x", b"* * * * * root true\n")),
        ["'/etc/cron.d/x': a path outside the release (absolute, or with '..')"],
        id="artifact-absolute-path",
    ),
    pytest.param(
        artifact(
            lambda archive: archive.add(
                "baked/passwd", kind=tarfile.SYMTYPE, linkname="/etc/passwd", listed=False
            )
        ),
        ["baked/passwd: not a regular file; a release holds only files and directories"],
        id="artifact-symbolic-link",
    ),
    # GNU tar as root would extract these modes as they are, and a copy would keep them.
    pytest.param(
        artifact(lambda archive: archive.add("source/run-as-root", b"#!/bin/sh\n", mode=0o4755)),
        [
            "source/run-as-root: mode 4755 (set-user-ID, set-group-ID, sticky or writable by "
            "others): a release never carries such modes"
        ],
        id="artifact-setuid-member",
    ),
    pytest.param(
        artifact(lambda archive: archive.add("baked/open.html", b"<p>x</p>\n", mode=0o666)),
        ["baked/open.html: mode 0666 (set-user-ID, set-group-ID, sticky or writable by others)"],
        id="artifact-world-writable-member",
    ),
    pytest.param(
        artifact(
            lambda archive: archive.add(
                "wheelhouse/fast-1.0-cp312-cp312-win_amd64.whl", b"not really a wheel"
            )
        ),
        [
            "wheelhouse/fast-1.0-cp312-cp312-win_amd64.whl: built for cp312-cp312-win_amd64, "
            f"{NODES}"
        ],
        id="artifact-wheel-for-windows",
    ),
    pytest.param(
        artifact(
            lambda archive: archive.add(
                "wheelhouse/fast-1.0-cp311-cp311-musllinux_1_1_x86_64.whl", b"not really a wheel"
            )
        ),
        [
            "wheelhouse/fast-1.0-cp311-cp311-musllinux_1_1_x86_64.whl: built for "
            f"cp311-cp311-musllinux_1_1_x86_64, {NODES}"
        ],
        id="artifact-wheel-for-musl",
    ),
    pytest.param(
        artifact(lambda archive: archive.move_to_end("manifest.json")),
        [
            "its first member is 'baked', not manifest.json: deploykit build writes the manifest "
            "first"
        ],
        id="artifact-manifest-not-first",
    ),
    pytest.param(
        artifact(_edit_manifest(lambda m: m.update(release_id="../../../etc"))),
        [
            "manifest.json: release_id '../../../etc' is not a release id (letters, digits, '.', "
            "'+', '_' and '-', starting with a letter or digit)"
        ],
        id="artifact-release-id-escaping-releases",
    ),
    pytest.param(
        artifact(_edit_manifest(lambda m: m.pop("contract"))),
        ["manifest.json: no 'contract': not a manifest deploykit build wrote"],
        id="artifact-manifest-without-contract",
    ),
]


@pytest.mark.parametrize(("make", "expected"), CATALOGUE)
def test_malformed_input_is_refused(
    tmp_path: Path, good_artifact: Path, make: Maker, expected: list[str]
) -> None:
    argv = make(tmp_path, good_artifact)

    run = deploykit(*argv)

    assert_refused(run, [phrase.format(tmp=tmp_path) for phrase in expected])
    if argv[0] == "build":
        # Refused while reading the contract: not even the output directory was made.
        assert not (tmp_path / "out").exists()


def test_the_catalogue_is_complete() -> None:
    ids = [param.id for param in CATALOGUE]
    assert len(ids) == len(set(ids)) >= 24
    for kind in ("inventory-", "variable-", "contract-", "artifact-"):
        assert sum(i.startswith(kind) for i in ids) >= 4, kind


def test_the_good_inputs_are_accepted(tmp_path: Path, good_artifact: Path) -> None:
    """The baselines the catalogue breaks: each mistake above is the only thing wrong."""
    inventory = write(tmp_path / "hosts.yml", inventory_yaml())
    assert deploykit("check", "-i", str(inventory)).returncode == 0
    assert deploykit("verify", str(good_artifact)).returncode == 0
    # Read and written back unchanged, the artifact still verifies: Archive alters nothing else.
    copied = Archive(good_artifact).write(tmp_path / "copy.tar.gz")
    run = deploykit("verify", str(copied))
    assert run.returncode == 0, run.output


def test_contract_errors_name_the_table(tmp_path: Path) -> None:
    run = deploykit(*contract("[project]\nname = 'shop'\nversion = '1.0.0'\n")(tmp_path, tmp_path))
    assert_refused(run, ["no [tool.deploykit] table"])


# --- deploy: refused before any connection ------------------------------------------------------

DEPLOY_REFUSALS = [
    pytest.param(
        raw_file(lambda data: data[: len(data) // 2]),
        "the archive is truncated or corrupt",
        id="truncated",
    ),
    pytest.param(raw_file(lambda _: b""), "an empty file, not a release", id="empty"),
    pytest.param(
        artifact(lambda archive: archive.flip_byte(WEB_PY)),
        f"{WEB_PY}: sha256 differs from manifest.json",
        id="one-byte-changed",
    ),
    pytest.param(
        artifact(lambda archive: archive.add("../x", b"outside\n")),
        "'../x': a path outside the release",
        id="path-escaping-the-root",
    ),
    pytest.param(
        artifact(
            lambda archive: archive.add(
                "wheelhouse/fast-1.0-cp312-cp312-win_amd64.whl", b"not really a wheel"
            )
        ),
        "built for cp312-cp312-win_amd64",
        id="wheel-for-windows",
    ),
    pytest.param(
        artifact(_edit_manifest(lambda m: m.pop("release_id"))),
        "manifest.json: no 'release_id'",
        id="manifest-without-release-id",
    ),
]


def assert_refused_up_front(run: Run, phrase: str) -> None:
    """Exit 2 in seconds, and the error is all that was printed: no playbook ran, so no host was
    contacted (one SSH attempt to a TEST-NET address alone takes Ansible's 10 s timeout)."""
    assert_refused(run, [phrase])
    assert run.output.lstrip().startswith("error:"), run.output
    assert not any(marker in run.output for marker in RUN_MARKERS), run.output
    assert run.seconds < 8, f"{run.seconds:.1f} s"


@pytest.mark.parametrize(("make", "phrase"), DEPLOY_REFUSALS)
def test_deploy_refuses_a_bad_artifact_before_any_connection(
    tmp_path: Path, good_artifact: Path, make: Maker, phrase: str
) -> None:
    inventory = write(tmp_path / "inventory" / "hosts.yml", inventory_yaml())
    bad = Path(make(tmp_path, good_artifact)[-1])

    run = deploykit("deploy", "--artifact", str(bad), "-i", str(inventory))

    assert_refused_up_front(run, phrase)


def test_deploy_refuses_a_bad_inventory_before_reading_the_artifact(
    tmp_path: Path, good_artifact: Path
) -> None:
    inventory = write(
        tmp_path / "hosts.yml",
        inventory_yaml({"wokrer": TESTNET_HOSTS["worker"]}, omit="worker"),
    )

    run = deploykit("deploy", "--artifact", str(good_artifact), "-i", str(inventory))

    assert_refused_up_front(run, "group 'wokrer': not a deploykit group (did you mean 'worker'?)")
    assert f"problem(s) in {inventory}: nothing was run" in run.text


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (("nope",), "no group or host named 'nope' in the inventory"),
        (("app", "--grep", "(unclosed"), "--grep '(unclosed' is not a regular expression"),
        (("app,", "--since", "1h"), "has an empty name"),
    ],
    ids=["unknown-group", "bad-expression", "empty-name"],
)
def test_logs_refuses_bad_input_before_any_connection(
    tmp_path: Path, args: tuple[str, ...], phrase: str
) -> None:
    inventory = write(tmp_path / "inventory" / "hosts.yml", inventory_yaml())

    run = deploykit("logs", *args, "-i", str(inventory))

    assert_refused_up_front(run, phrase)


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (("--since", "yesterday"), "expected a duration (30s, 10m, 2h, 1d) or a time"),
        (("-n", "many"), "expected a number of lines (0 or more), got 'many'"),
    ],
    ids=["bad-since", "bad-lines"],
)
def test_logs_refuses_bad_options(tmp_path: Path, args: tuple[str, ...], phrase: str) -> None:
    inventory = write(tmp_path / "inventory" / "hosts.yml", inventory_yaml())

    run = deploykit("logs", "app", *args, "-i", str(inventory))

    assert_refused(run, [phrase])
    assert run.seconds < 8, f"{run.seconds:.1f} s"


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (("on", "--allow", "10.0.0.300/8"), "'10.0.0.300/8' is not an IP network"),
        (("on", "--retry-after", "0"), "retry-after 0: give 1 to 86400 seconds"),
        (("on", "--message", "x" * 501), "the maintenance message has 501 characters"),
        (("on", "--message", " "), "the maintenance message is empty"),
        (("off", "--allow", "10.0.0.0/8"), "--allow: for maintenance on, not maintenance off"),
        (("status", "--hide-pages"), "--hide-pages: for maintenance on, not maintenance status"),
    ],
    ids=["bad-network", "bad-retry-after", "long-message", "empty-message", "off-allow", "status"],
)
def test_maintenance_refuses_bad_input_before_any_connection(
    tmp_path: Path, args: tuple[str, ...], phrase: str
) -> None:
    inventory = write(tmp_path / "inventory" / "hosts.yml", inventory_yaml())

    run = deploykit("maintenance", *args, "-i", str(inventory))

    assert_refused_up_front(run, phrase)


@pytest.mark.parametrize(
    ("args", "omit", "phrase"),
    [
        (("--timeout", "0"), None, "--timeout: seconds must be more than 0: '0'"),
        (("--timeout", "soon"), None, "--timeout: not a number of seconds: 'soon'"),
        (("--now",), "worker", "group 'worker': missing or empty"),
    ],
    ids=["zero-timeout", "bad-timeout", "no-worker"],
)
def test_bake_refuses_bad_input_before_any_connection(
    tmp_path: Path, args: tuple[str, ...], omit: str | None, phrase: str
) -> None:
    inventory = write(tmp_path / "inventory" / "hosts.yml", inventory_yaml(omit=omit))

    run = deploykit("bake", *args, "-i", str(inventory))

    assert_refused(run, [phrase])
    assert not any(marker in run.output for marker in RUN_MARKERS), run.output
    assert run.seconds < 8, f"{run.seconds:.1f} s"


@pytest.mark.parametrize(
    ("value", "phrase"),
    [("-5", "give 0 (no soak) to 3600 seconds: '-5'"), ("soon", "not a number of seconds: 'soon'")],
    ids=["negative", "not-a-number"],
)
def test_deploy_refuses_a_bad_canary_soak(
    tmp_path: Path, good_artifact: Path, value: str, phrase: str
) -> None:
    inventory = write(tmp_path / "inventory" / "hosts.yml", inventory_yaml())

    run = deploykit(
        "deploy", "--artifact", str(good_artifact), "-i", str(inventory), f"--canary-soak={value}"
    )

    assert_refused(run, [phrase])
    assert run.seconds < 8, f"{run.seconds:.1f} s"


def test_deploy_refuses_a_hook_that_cannot_run_before_any_connection(
    tmp_path: Path, good_artifact: Path
) -> None:
    inventory = write(tmp_path / "inventory" / "hosts.yml", inventory_yaml())
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "pre-deploy").write_text("#!/bin/sh\nexit 0\n")  # not executable

    run = deploykit(
        "deploy", "--artifact", str(good_artifact), "-i", str(inventory), "--hooks", str(hooks)
    )

    assert_refused_up_front(run, f"the pre-deploy hook {hooks / 'pre-deploy'} is not an executable")


def test_deploy_refuses_a_notification_url_it_cannot_post_to_without_printing_it(
    tmp_path: Path, good_artifact: Path
) -> None:
    inventory = write(tmp_path / "inventory" / "hosts.yml", inventory_yaml())

    run = deploykit(
        "deploy", "--artifact", str(good_artifact), "-i", str(inventory),
        "--notify", "hooks.example.com/services/SECRET-TOKEN",
    )  # fmt: skip

    assert_refused_up_front(run, "the notification URL (--notify or DEPLOYKIT_NOTIFY_URL) is not")
    assert "SECRET-TOKEN" not in run.output
