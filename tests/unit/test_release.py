"""deploykit.release: the application contract, real builds of the minimal app, and verify()."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.deploykit.fleet.plugins.module_utils.release import deploykit_apps
from deploykit import release
from deploykit.errors import BadInput, BuildError

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "minimal_app"

VALID = """
[project]
name = "shop"
version = "1.0.0"

[tool.deploykit]
name = "shop"
wsgi = "shop.web:app"
health_path = "/healthz"
"""


def write_app(root: Path, pyproject: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(textwrap.dedent(pyproject))
    return root


def copy_fixture(dest: Path) -> Path:
    shutil.copytree(
        FIXTURE, dest, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    )
    return dest


# --- the contract ---------------------------------------------------------------------------


def test_the_fixture_keeps_to_the_contract() -> None:
    contract = release.load_contract(FIXTURE)
    assert contract == release.AppContract(
        name="minimal",
        wsgi="minimal.web:app",
        health_path="/healthz",
        worker=None,
        bake="minimal.bake:bake",
        migrate="minimal.migrate:migrate",
        live_path="/livez",
        settings=("SECRET_KEY",),
        root=FIXTURE,
    )


def test_a_full_contract_is_read(tmp_path: Path) -> None:
    app = write_app(
        tmp_path,
        VALID
        + 'worker = "shop.jobs:celery_app"\nbake = "shop.bake:bake"\n'
        + 'settings = ["SECRET_KEY", "REDIS_URL", "BROKER_URL"]\n',
    )
    contract = release.load_contract(app)
    assert contract.worker == "shop.jobs:celery_app"
    assert contract.settings == ("SECRET_KEY", "REDIS_URL", "BROKER_URL")
    assert contract.root == tmp_path.resolve()


def _replace(line: str, new: str | None) -> str:
    lines = [new if entry == line else entry for entry in VALID.splitlines()]
    assert lines != VALID.splitlines(), line
    return "\n".join(entry for entry in lines if entry is not None) + "\n"


W = "{pyproject} [tool.deploykit]"

CONTRACT_ERRORS = [
    (
        "[project]\nname = 'shop'\n",
        "{pyproject}: no [tool.deploykit] table: declare the application's name, wsgi and "
        'health_path, e.g. name = "shop", wsgi = "shop.web:app", health_path = "/healthz"',
    ),
    ("[tool.deploykit\n", "{pyproject}: not valid TOML: Expected ']' at the end of a table "),
    (
        "[tool]\ndeploykit = 3\n",
        W + ": must be a table of keys (name, wsgi, health_path, live_path, worker, bake, "
        "migrate, settings)",
    ),
    (
        VALID + 'wsig = "shop.web:app"\n',
        W + ": unknown key 'wsig' (did you mean 'wsgi'?): the keys are name, wsgi, "
        "health_path, live_path, worker, bake, migrate, settings",
    ),
    (
        VALID + "replicas = 3\n",
        W + ": unknown key 'replicas': the keys are name, wsgi, health_path, live_path, "
        "worker, bake, migrate, settings",
    ),
    (_replace('wsgi = "shop.web:app"', None), W + ': wsgi is required, e.g. wsgi = "shop.web:app"'),
    (
        _replace('name = "shop"', None).replace("[project]\n", '[project]\nname = "shop"\n', 1),
        W + ': name is required, e.g. name = "shop"',
    ),
    (
        _replace('health_path = "/healthz"', None),
        W + ': health_path is required, e.g. health_path = "/healthz"',
    ),
    (
        _replace('name = "shop"', 'name = "Shop"'),
        W + ": name = 'Shop': use lowercase letters, digits and '-', starting with a letter, "
        'e.g. name = "shop"',
    ),
    (
        _replace('name = "shop"', 'name = "2shop"'),
        W + ": name = '2shop': use lowercase letters, digits and '-', starting with a letter, "
        'e.g. name = "shop"',
    ),
    (
        _replace('name = "shop"', "name = 7"),
        W + ': name = 7: give a string, e.g. name = "shop"',
    ),
    (
        _replace('wsgi = "shop.web:app"', 'wsgi = "shop.web"'),
        W + ": wsgi = 'shop.web': give the WSGI application as module:attribute, e.g. "
        'wsgi = "shop.web:app"',
    ),
    (
        _replace('wsgi = "shop.web:app"', 'wsgi = "shop/web.py:app"'),
        W + ": wsgi = 'shop/web.py:app': give the WSGI application as module:attribute, e.g. "
        'wsgi = "shop.web:app"',
    ),
    (
        _replace('health_path = "/healthz"', 'health_path = "healthz"'),
        W + ": health_path = 'healthz': give a URL path starting with / (no spaces, query or "
        'fragment), e.g. health_path = "/healthz"',
    ),
    (
        VALID + 'worker = "celery_app"\n',
        W + ": worker = 'celery_app': give the Celery application as module:attribute, e.g. "
        'worker = "shop.jobs:celery_app"',
    ),
    (
        VALID + 'bake = "shop.bake:"\n',
        W + ": bake = 'shop.bake:': give the callable bake(out_dir) as module:attribute, e.g. "
        'bake = "shop.bake:bake"',
    ),
    (
        VALID + 'settings = "SECRET_KEY"\n',
        W + ": settings = 'SECRET_KEY': give a list of UPPER_CASE environment variable names, "
        'e.g. settings = ["SECRET_KEY", "REDIS_URL"]',
    ),
    (
        VALID + 'settings = ["SECRET_KEY", "redis_url"]\n',
        W + ": settings: 'redis_url' is not an UPPER_CASE environment variable name (A-Z, "
        "digits and _, starting with a letter)",
    ),
    (
        VALID + "settings = [1]\n",
        W + ": settings: 1 is not an UPPER_CASE environment variable name (A-Z, digits and _, "
        "starting with a letter)",
    ),
    (
        VALID + 'settings = ["SECRET_KEY", "SECRET_KEY"]\n',
        W + ": settings: 'SECRET_KEY' is listed twice",
    ),
]


@pytest.mark.parametrize(("pyproject", "message"), CONTRACT_ERRORS)
def test_contract_mistakes_are_named(tmp_path: Path, pyproject: str, message: str) -> None:
    app = write_app(tmp_path / "app", pyproject)
    with pytest.raises(BadInput) as raised:
        release.load_contract(app)
    expected = message.format(pyproject=app / "pyproject.toml")
    if expected.endswith(" "):  # the TOML parser's own words follow
        assert str(raised.value).startswith(expected)
    else:
        assert str(raised.value) == expected


def test_a_directory_without_pyproject_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BadInput) as raised:
        release.load_contract(tmp_path)
    assert str(raised.value) == (
        f"{tmp_path}: no pyproject.toml: an application is a Python project that declares "
        "itself under [tool.deploykit] in pyproject.toml"
    )
    with pytest.raises(BadInput, match="no such directory"):
        release.load_contract(tmp_path / "missing")


def test_a_bad_version_or_python_is_refused_before_building(tmp_path: Path) -> None:
    app = write_app(tmp_path / "app", VALID)
    with pytest.raises(BadInput) as raised:
        release.build(app, version="../1", out_dir=tmp_path / "out", log=lambda _: None)
    assert str(raised.value).startswith("version '../1': use letters, digits")
    dynamic = write_app(tmp_path / "dyn", VALID.replace('version = "1.0.0"', ""))
    with pytest.raises(BadInput, match=r"\[project\] has no static version"):
        release.build(dynamic, out_dir=tmp_path / "out", log=lambda _: None)
    with pytest.raises(BadInput, match="python '/nonexistent/python3': cannot be run"):
        release.build(app, out_dir=tmp_path / "out", python="/nonexistent/python3")
    assert not (tmp_path / "out").exists()


# --- platform and source tree ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("wheel", "fits"),
    [
        ("gunicorn-23.0.0-py3-none-any.whl", True),
        ("six-1.16.0-py2.py3-none-any.whl", True),
        ("psycopg_binary-3.2.3-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", True),
        ("cryptography-44.0.0-cp39-abi3-manylinux_2_28_x86_64.whl", True),
        ("markupsafe-2.1.5-cp311-cp311-manylinux2014_x86_64.whl", True),
        ("pydantic_core-2.27.2-cp311-cp311-manylinux_2_36_x86_64.whl", True),
        ("pydantic_core-2.27.2-cp311-cp311-manylinux_2_39_x86_64.whl", False),
        ("pydantic_core-2.27.2-cp312-cp312-manylinux_2_17_x86_64.whl", False),
        ("pydantic_core-2.27.2-cp311-cp311-musllinux_1_1_x86_64.whl", False),
        ("pydantic_core-2.27.2-cp311-cp311-manylinux_2_17_aarch64.whl", False),
        ("pydantic_core-2.27.2-cp311-cp311-macosx_11_0_arm64.whl", False),
        ("pydantic_core-2.27.2-cp311-cp311-win_amd64.whl", False),
        ("localthing-1.0-cp311-cp311-linux_x86_64.whl", True),
        ("not-a-wheel.whl", False),
    ],
)
def test_wheel_tags_are_checked_against_the_nodes(wheel: str, fits: bool) -> None:
    assert (release.wheel_problem(wheel) is None) is fits


def test_a_wheel_compiled_against_a_newer_glibc_is_refused() -> None:
    wheel = "localthing-1.0-cp311-cp311-linux_x86_64.whl"
    assert release.wheel_problem(wheel, builder_glibc=(2, 36)) is None
    assert release.wheel_problem(wheel, builder_glibc=(2, 39)) == (
        "compiled on this controller against glibc 2.39, newer than the nodes' glibc 2.36"
    )
    assert release.wheel_problem("x-1-cp312-cp312-linux_x86_64.whl") == (
        "built for cp312-cp312-linux_x86_64, which the nodes (Debian 12, CPython 3.11, x86_64) "
        "cannot install"
    )


def test_source_files_leave_out_vcs_caches_venvs_and_build_output(tmp_path: Path) -> None:
    root = tmp_path / "app"
    for relative in (
        "pyproject.toml",
        "shop/__init__.py",
        "shop/build/page.py",  # a package named build is source
        "shop/__pycache__/x.cpython-311.pyc",
        "shop/stale.pyc",
        ".git/HEAD",
        ".venv/bin/python",
        "env/pyvenv.cfg",
        "env/lib/x.py",
        "build/lib/shop/__init__.py",
        "dist/shop-1.0.tar.gz",
        "shop.egg-info/PKG-INFO",
        "src/shop.egg-info/PKG-INFO",
        ".mypy_cache/x.json",
        "out/shop-1.tar.gz",
    ):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(relative)
    files = release.source_files(root, exclude=[root / "out"])
    assert files == ["pyproject.toml", "shop/__init__.py", "shop/build/page.py"]

    (root / "link.py").symlink_to(root / "shop" / "__init__.py")
    with pytest.raises(BadInput, match=r"link\.py: a symbolic link"):
        release.source_files(root)


def test_the_source_hash_depends_on_paths_and_contents_only(tmp_path: Path) -> None:
    one = write_app(tmp_path / "one", VALID)
    two = write_app(tmp_path / "two", VALID)
    assert release.source_hash(one, ["pyproject.toml"]) == release.source_hash(
        two, ["pyproject.toml"]
    )
    (two / "pyproject.toml").rename(two / "other.toml")
    assert release.source_hash(one, ["pyproject.toml"]) != release.source_hash(two, ["other.toml"])


# --- release ids ----------------------------------------------------------------------------

SOURCE_SHA256 = "da107a5af7e7" + "0" * 52


def test_a_release_id_is_the_version_and_the_source_hash_s_start() -> None:
    assert release.release_id_for("1.0.4", SOURCE_SHA256) == "1.0.4-da107a5af7e7"


@pytest.mark.parametrize(
    ("release_id", "app", "short"),
    [
        ("1.0.4-da107a5af7e7", "shop", "1.0.4-da107a5"),
        # Build metadata orders nothing; the hash tells builds apart.
        ("1.0.4-rc.1+build.7-da107a5af7e7", "shop", "1.0.4-rc.1-da107a5"),
        # A version that repeats the application's name: the table names it once.
        ("shop-1.0.4-rc.1+build.7-da107a5af7e7", "shop", "1.0.4-rc.1-da107a5"),
        ("shop-1.0.4-da107a5af7e7", None, "shop-1.0.4-da107a5"),
        ("shop-1.0.4-da107a5af7e7", "notes", "shop-1.0.4-da107a5"),
        # Past 12 characters, the version's start and end.
        ("2026.12.03-nightly.17-da107a5af7e7", "shop", "2026.…tly.17-da107a5"),
        # Not <version>-<12 hex>: shown whole.
        ("r2", "shop", "r2"),
        ("1.0.4-DA107A5AF7E7", "shop", "1.0.4-DA107A5AF7E7"),
    ],
)
def test_the_short_release_id(release_id: str, app: str | None, short: str) -> None:
    assert release.short_release_id(release_id, app) == short


# --- the minimal app itself -----------------------------------------------------------------


@pytest.fixture
def minimal_web(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.syspath_prepend(str(FIXTURE / "src"))
    import minimal.web  # noqa: PLC0415

    yield minimal.web
    for name in [m for m in sys.modules if m == "minimal" or m.startswith("minimal.")]:
        del sys.modules[name]


def _get(app: Callable[..., Any], path: str) -> tuple[str, dict[str, str], bytes]:
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen["status"], seen["headers"] = status, dict(headers)

    body = b"".join(app({"PATH_INFO": path, "REQUEST_METHOD": "GET"}, start_response))
    return seen["status"], seen["headers"], body


def test_the_minimal_app_reports_its_release_and_health(
    minimal_web: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEPLOYKIT_RELEASE_ID", "0.1.0-abc")
    monkeypatch.setenv("SECRET_KEY", "s")
    status, headers, body = _get(minimal_web.app, "/healthz")
    assert status == "200 OK"
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"release": "0.1.0-abc", "checks": {"settings": "ok"}}
    monkeypatch.delenv("SECRET_KEY")
    status, _, body = _get(minimal_web.app, "/healthz")
    assert status.startswith("503")
    assert json.loads(body)["release"] == "0.1.0-abc"
    assert _get(minimal_web.app, "/")[0] == "200 OK"
    assert _get(minimal_web.app, "/nope")[0].startswith("404")


# --- real builds ----------------------------------------------------------------------------


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> release.Artifact:
    return release.build(FIXTURE, out_dir=tmp_path_factory.mktemp("out"), log=quiet)


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as tar:
        return {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar
            if m.isfile()
        }


def repack(source: Path, dest: Path, change: Callable[[dict[str, bytes]], None]) -> Path:
    """A copy of the artifact with its files changed by ``change`` (a tampered artifact)."""
    files = members(source)
    change(files)
    with tarfile.open(dest, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return dest


def test_the_artifact_holds_source_wheels_baked_pages_and_manifest(
    built: release.Artifact,
) -> None:
    assert built.path.name == f"minimal-{built.release_id}.tar.gz"
    assert built.release_id.startswith("0.1.0-")
    assert built.size == built.path.stat().st_size
    files = members(built.path)
    assert next(iter(files)) == "manifest.json"
    manifest = json.loads(files["manifest.json"])
    assert manifest == built.manifest
    assert manifest["python"] == "cp311"
    assert manifest["platform"] == "manylinux_2_36_x86_64"
    assert manifest["requirement"] == "minimal-app==0.1.0"
    assert manifest["contract"]["wsgi"] == "minimal.web:app"
    assert manifest["checksum"] == release.files_checksum(manifest["files"])
    assert set(manifest["files"]) == set(files) - {"manifest.json"}
    assert "source/src/minimal/web.py" in files
    assert "source/pyproject.toml" in files
    wheels = sorted(n for n in files if n.startswith("wheelhouse/"))
    assert any(n.startswith("wheelhouse/minimal_app-0.1.0-") for n in wheels)
    assert any(n.startswith("wheelhouse/gunicorn-") for n in wheels)
    # What a node installs without a seed, resolved for the nodes at build time: every wheel but
    # installer's (the stage's tool, not a package of the release).
    assert manifest["install"] == [
        n.removeprefix("wheelhouse/") for n in wheels if not n.startswith("wheelhouse/installer-")
    ]
    page = files["baked/index.html"].decode()
    assert f"release {built.release_id}" in page
    assert not any("egg-info" in n or "/build/" in n for n in files)
    assert built.to_dict()["checksum"] == manifest["checksum"]


def test_building_leaves_the_application_untouched(built: release.Artifact) -> None:
    assert not list(FIXTURE.rglob("*.egg-info"))
    assert not (FIXTURE / "build").exists()


def test_the_same_source_builds_the_same_release(built: release.Artifact, tmp_path: Path) -> None:
    again = release.build(FIXTURE, out_dir=tmp_path, log=quiet)
    assert again.release_id == built.release_id
    assert again.manifest == built.manifest
    assert again.path.read_bytes() == built.path.read_bytes()


def test_a_changed_source_file_changes_the_release(built: release.Artifact, tmp_path: Path) -> None:
    app = copy_fixture(tmp_path / "app")
    web = app / "src" / "minimal" / "web.py"
    web.write_text(web.read_text() + "\n# a change\n")
    lines: list[str] = []
    changed = release.build(app, out_dir=tmp_path / "out", log=lines.append)
    assert changed.release_id != built.release_id
    assert changed.release_id.startswith("0.1.0-")
    assert changed.manifest["checksum"] != built.manifest["checksum"]
    assert changed.manifest["source"]["revision"] is None  # not in a git checkout
    assert any("offline install" in line for line in lines)
    assert release.verify(changed.path)["release_id"] == changed.release_id


def test_verify_accepts_a_good_artifact(built: release.Artifact) -> None:
    assert release.verify(built.path) == built.manifest


def test_verify_names_where_a_truncated_archive_ends(
    built: release.Artifact, tmp_path: Path
) -> None:
    data = built.path.read_bytes()
    names = set(members(built.path)) | {"manifest.json"}
    for cut in (len(data) // 2, len(data) - 10):
        cut_file = tmp_path / f"cut{cut}.tar.gz"
        cut_file.write_bytes(data[:cut])
        with pytest.raises(BadInput) as raised:
            release.verify(cut_file)
        message = str(raised.value)
        assert message.startswith(f"{cut_file}: the archive is truncated or corrupt (")
        named = message.split("(", 1)[1].split(")", 1)[0]
        assert named.split(" ", 1)[0] in ("in", "after")
        assert named.split(" ", 1)[1] in names


def test_verify_names_a_file_changed_after_the_build(
    built: release.Artifact, tmp_path: Path
) -> None:
    def change(files: dict[str, bytes]) -> None:
        files["source/src/minimal/web.py"] += b"# tampered\n"

    tampered = repack(built.path, tmp_path / "tampered.tar.gz", change)
    with pytest.raises(BadInput) as raised:
        release.verify(tampered)
    assert str(raised.value).startswith(
        f"{tampered}: source/src/minimal/web.py: sha256 differs from manifest.json "
        "(changed after the build)"
    )


def test_verify_names_a_file_added_or_removed_after_the_build(
    built: release.Artifact, tmp_path: Path
) -> None:
    def add(files: dict[str, bytes]) -> None:
        files["baked/extra.html"] = b"<p>extra</p>"

    def remove(files: dict[str, bytes]) -> None:
        del files["baked/index.html"]

    added = repack(built.path, tmp_path / "added.tar.gz", add)
    with pytest.raises(BadInput, match=r"baked/extra\.html: not in manifest\.json"):
        release.verify(added)
    removed = repack(built.path, tmp_path / "removed.tar.gz", remove)
    with pytest.raises(BadInput, match=r"baked/index\.html: listed in manifest\.json but missing"):
        release.verify(removed)


def test_verify_refuses_a_release_built_for_another_python(
    built: release.Artifact, tmp_path: Path
) -> None:
    def other_python(files: dict[str, bytes]) -> None:
        manifest = json.loads(files["manifest.json"])
        manifest["python"] = "cp312"
        files["manifest.json"] = json.dumps(manifest).encode()

    foreign = repack(built.path, tmp_path / "cp312.tar.gz", other_python)
    with pytest.raises(BadInput) as raised:
        release.verify(foreign)
    assert str(raised.value).startswith(
        f"{foreign}: manifest.json: built for cp312 on manylinux_2_36_x86_64; the nodes need "
        "cp311 on manylinux_2_36_x86_64 (Debian 12, CPython 3.11, x86_64)"
    )


def test_verify_refuses_a_wheel_for_another_platform(
    built: release.Artifact, tmp_path: Path
) -> None:
    wheel = "wheelhouse/fast-1.0-cp311-cp311-macosx_11_0_arm64.whl"

    def add_foreign_wheel(files: dict[str, bytes]) -> None:
        files[wheel] = b"not really a wheel"
        manifest = json.loads(files["manifest.json"])
        manifest["files"][wheel] = hashlib.sha256(files[wheel]).hexdigest()
        manifest["checksum"] = release.files_checksum(manifest["files"])
        files["manifest.json"] = json.dumps(manifest).encode()

    foreign = repack(built.path, tmp_path / "mac.tar.gz", add_foreign_wheel)
    with pytest.raises(BadInput) as raised:
        release.verify(foreign)
    assert str(raised.value) == (
        f"{foreign}: {wheel}: built for cp311-cp311-macosx_11_0_arm64, which the nodes "
        "(Debian 12, CPython 3.11, x86_64) cannot install"
    )


def test_verify_refuses_an_edited_manifest(built: release.Artifact, tmp_path: Path) -> None:
    def edit(files: dict[str, bytes]) -> None:
        manifest = json.loads(files["manifest.json"])
        manifest["files"]["source/pyproject.toml"] = "0" * 64
        files["manifest.json"] = json.dumps(manifest).encode()

    edited = repack(built.path, tmp_path / "edited.tar.gz", edit)
    with pytest.raises(BadInput, match="its checksum does not match its files list"):
        release.verify(edited)


def test_an_app_without_gunicorn_is_refused(tmp_path: Path) -> None:
    app = copy_fixture(tmp_path / "app")
    pyproject = app / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('dependencies = ["gunicorn>=22"]', ""))
    with pytest.raises(BadInput) as raised:
        release.build(app, out_dir=tmp_path / "out", log=quiet)
    assert str(raised.value) == (
        f"{pyproject}: [project] dependencies lack gunicorn: the nodes serve minimal.web:app "
        "with gunicorn, and nodes install only from the release's wheelhouse\n"
        '  hint: add "gunicorn" to [project] dependencies'
    )
    assert not (tmp_path / "out").exists()


def test_a_contract_module_missing_from_the_wheel_is_named(tmp_path: Path) -> None:
    app = copy_fixture(tmp_path / "app")
    pyproject = app / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("minimal.web:app", "minimal.wbe:app"))
    with pytest.raises(BadInput) as raised:
        release.build(app, out_dir=tmp_path / "out", log=quiet)
    assert str(raised.value).startswith(
        f"{pyproject} [tool.deploykit]: wsgi = 'minimal.wbe:app': module minimal.wbe is not in "
        "the installed application"
    )


def test_a_failing_bake_stops_the_build(tmp_path: Path) -> None:
    app = copy_fixture(tmp_path / "app")
    bake = app / "src" / "minimal" / "bake.py"
    bake.write_text(
        bake.read_text().replace(
            "    release = ", '    raise RuntimeError("no catalogue")\n    release = '
        )
    )
    with pytest.raises(BuildError) as raised:
        release.build(app, out_dir=tmp_path / "out", log=quiet)
    message = str(raised.value)
    assert message.startswith("bake minimal.bake:bake failed (exit 1) in the offline virtualenv")
    assert "RuntimeError: no catalogue" in message
    assert not (tmp_path / "out").exists()


def _fake_wheel(directory: Path, name: str, requires: list[str]) -> None:
    """An installable pure-Python wheel NAME 1.0: one empty module, these Requires-Dist."""
    dist = f"{name}-1.0"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n"
    metadata += "".join(f"Requires-Dist: {line}\n" for line in requires)
    files = {
        f"{name}.py": "",
        f"{dist}.dist-info/METADATA": metadata,
        f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{path},,\n" for path in [*files, f"{dist}.dist-info/RECORD"])
    with zipfile.ZipFile(directory / f"{name}-1.0-py3-none-any.whl", "w") as archive:
        for path, text in {**files, f"{dist}.dist-info/RECORD": record}.items():
            archive.writestr(path, text)


def test_the_offline_install_refuses_a_wheelhouse_without_a_dependency(tmp_path: Path) -> None:
    # What the build's check install proves (uv, no index): every dependency is in the wheelhouse.
    wheelhouse = tmp_path / "wheels"
    wheelhouse.mkdir()
    _fake_wheel(wheelhouse, "orders", ["ledgerish>=1"])
    builder = release._inspect_python(sys.executable)
    with pytest.raises(BuildError) as raised:
        release._install_offline(builder, wheelhouse, "orders==1.0", tmp_path / "first")
    message = str(raised.value)
    assert message.startswith("the wheelhouse is incomplete: installing orders==1.0 offline failed")
    assert "ledgerish" in message
    _fake_wheel(wheelhouse, "ledgerish", [])
    python = release._install_offline(builder, wheelhouse, "orders==1.0", tmp_path / "second")
    installed = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('ledgerish'))"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert installed.stdout.strip() == "1.0", installed.stderr


def test_the_wheelhouse_is_judged_with_the_nodes_markers(tmp_path: Path) -> None:
    # pip resolves with the controller's Python; Debian 12's 3.11.2 needs what a 3.11.7 skips.
    _fake_wheel(
        tmp_path,
        "redisish",
        [
            'async-timeout>=4.0.3; python_full_version < "3.11.3"',
            'tomli; python_version < "3.11"',
            'pywin; sys_platform == "win32"',
            'extra-only; extra == "speed"',
            "present",
        ],
    )
    _fake_wheel(tmp_path, "present", [])
    assert release.missing_for_nodes(tmp_path) == ["async-timeout>=4.0.3"]


def test_the_applications_deploykit_installed_are_found_by_their_units(tmp_path: Path) -> None:
    helper = "/usr/local/libexec/deploykit-release exec "
    (tmp_path / "shop-web.service").write_text(f"ExecStart={helper}/srv/shop gunicorn @wsgi@\n")
    (tmp_path / "shop-worker.service").write_text(f"ExecStart={helper}/srv/shop celery\n")
    (tmp_path / "notes-web.service").write_text(f"ExecStart={helper}/srv/notes gunicorn\n")
    # The worker's unit per release: its template.
    (tmp_path / "notes-worker@.service").write_text(
        f"ExecStart={helper.replace(' exec ', ' exec --release %i ')}/srv/notes celery\n"
    )
    # Not deploykit's: another web unit on the host, and a unit of another kind.
    (tmp_path / "nginx-web.service").write_text("ExecStart=/usr/sbin/nginx\n")
    (tmp_path / "shop-beat.service").write_text(f"ExecStart={helper}/srv/shop celery beat\n")
    apps = deploykit_apps(str(tmp_path))
    assert {name: sorted(units) for name, units in apps.items()} == {
        "notes": ["notes-web.service", "notes-worker@.service"],
        "shop": ["shop-web.service", "shop-worker.service"],
    }
    assert deploykit_apps(str(tmp_path / "missing")) == {}
