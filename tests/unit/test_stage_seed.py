"""deploykit.fleet.stage: which kept release may seed a new release's virtualenv (the same
dependency wheels, byte for byte; never the application's own wheel, never an incomplete venv)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ansible_collections.deploykit.fleet.plugins.modules import stage
from deploykit import release


def manifest(requirement: str, wheels: dict[str, str]) -> dict[str, object]:
    return {
        "requirement": requirement,
        "files": {f"wheelhouse/{name}": digest for name, digest in wheels.items()}
        | {"source/app.py": "0" * 64},
    }


DEPS = {"flask-3.1.3-py3-none-any.whl": "a" * 64, "gunicorn-27.0.1-py3-none-any.whl": "b" * 64}


def keep(root: Path, release: str, data: dict[str, object], *, complete: bool = True) -> None:
    directory = root / "releases" / release
    (directory / "venv").mkdir(parents=True)
    (directory / "manifest.json").write_text(json.dumps(data))
    if complete:
        (directory / "venv" / stage.VENV_MARKER).write_text("done\n")


def test_the_applications_own_wheel_is_not_a_dependency() -> None:
    # A dependency whose name starts with the application's is still one.
    deps = {**DEPS, "My.App_extras-2.0-py3-none-any.whl": "d" * 64}
    wheels = {**deps, "my_app-1.0-py3-none-any.whl": "c" * 64}
    assert stage.dependencies(manifest("My.App==1.0", wheels)) == {
        f"wheelhouse/{name}": digest for name, digest in deps.items()
    }


def test_the_live_release_seeds_when_its_wheels_are_the_same(tmp_path: Path) -> None:
    keep(tmp_path, "1.0", manifest("shop==1.0", {**DEPS, "shop-1.0-py3-none-any.whl": "1" * 64}))
    keep(tmp_path, "0.9", manifest("shop==0.9", {**DEPS, "shop-0.9-py3-none-any.whl": "2" * 64}))
    (tmp_path / "current").symlink_to("releases/1.0")
    new = manifest("shop==1.1", {**DEPS, "shop-1.1-py3-none-any.whl": "3" * 64})
    assert stage.seed_release(str(tmp_path), "1.1", new) == "1.0"


def test_a_changed_dependency_or_an_incomplete_venv_never_seeds(tmp_path: Path) -> None:
    keep(tmp_path, "1.0", manifest("shop==1.0", DEPS), complete=False)
    keep(tmp_path, "0.9", manifest("shop==0.9", {**DEPS, "flask-3.1.3-py3-none-any.whl": "f" * 64}))
    assert stage.seed_release(str(tmp_path), "1.1", manifest("shop==1.1", DEPS)) is None


# --- the seeded install: the application's own wheel only, with pypa/installer --------------------


class Node:
    """What build_venv asks of AnsibleModule: run a command, fail with a message."""

    def run_command(
        self, argv: list[str], environ_update: dict[str, str] | None = None
    ) -> tuple[int, str, str]:
        proc = subprocess.run(
            argv, env={**os.environ, **(environ_update or {})}, capture_output=True, text=True,
            check=False,
        )  # fmt: skip
        return proc.returncode, proc.stdout, proc.stderr

    def fail_json(self, msg: str, **_: object) -> None:
        raise AssertionError(msg)


def app_wheel(directory: Path, version: str, modules: dict[str, str]) -> Path:
    """An installable wheel of orders VERSION: the package's modules and a console script."""
    dist = f"orders-{version}.dist-info"
    files = {
        **{f"orders/{name}.py": text for name, text in modules.items()},
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: orders\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist}/entry_points.txt": "[console_scripts]\norders-report = orders:report\n",
    }
    record = "".join(f"{path},,\n" for path in [*files, f"{dist}/RECORD"])
    path = directory / f"orders-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in {**files, f"{dist}/RECORD": record}.items():
            archive.writestr(name, text)
    return path


def release_of(root: Path, version: str, modules: dict[str, str], installer: Path | None) -> Path:
    """A kept release of orders VERSION: its wheelhouse (its own wheel and installer's when
    given, no dependency) and its manifest."""
    directory = root / "releases" / version
    (directory / "wheelhouse").mkdir(parents=True)
    own = app_wheel(directory / "wheelhouse", version, modules)
    wheels = {own.name: "o" * 64}
    if installer is not None:
        shutil.copy(installer, directory / "wheelhouse")
        wheels[installer.name] = "i" * 64
    data = manifest(f"orders=={version}", wheels)
    if installer is not None:
        # What deploykit build resolves for the nodes (a build without installer predates it).
        data["install"] = [own.name]
    (directory / "manifest.json").write_text(json.dumps(data))
    return directory


def run_python(venv: Path, code: str) -> str:
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.mark.parametrize("tool", ["installer", "pip"])
def test_a_seeded_venv_gets_the_new_wheel_and_keeps_nothing_of_the_old(
    tmp_path: Path, tool: str
) -> None:
    # installer when the wheelhouse has it (what deploykit build makes); pip for a release built
    # before the build shipped installer.
    installer = None
    if tool == "installer":
        wheels = tmp_path / "installer"
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(wheels),
             release.STAGE_INSTALLER],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        (installer,) = wheels.glob("installer-*.whl")
    root = tmp_path / "srv"
    old = {"__init__": "def report():\n    print('one')\n", "dropped": "GONE = 1\n"}
    first = release_of(root, "1.0", old, installer)
    node = Node()
    # The first release: a virtualenv of its own, nothing to seed from: the wheels the build
    # resolved, by installer, in a virtualenv without pip (pip when the release has no installer).
    assert stage.build_venv(node, str(root), str(first), sys.executable, json.loads(
        (first / "manifest.json").read_text())) is None  # fmt: skip
    assert (first / "venv" / "bin" / "pip").exists() == (tool == "pip")
    first_site = next((first / "venv" / "lib").glob("python*/site-packages"))
    assert list((first_site / "orders").glob("__pycache__/dropped.*.pyc")), "not compiled"
    assert (first / "venv" / "bin" / "orders-report").read_text().splitlines()[0] == (
        f"#!{first / 'venv' / 'bin' / 'python'}"
    )
    (root / "current").symlink_to("releases/1.0")
    new = {"__init__": "def report():\n    print('two')\n", "added": "NEW = 2\n"}
    second = release_of(root, "2.0", new, installer)
    data = json.loads((second / "manifest.json").read_text())
    assert stage.build_venv(node, str(root), str(second), sys.executable, data) == "1.0"

    venv = second / "venv"
    site = next((venv / "lib").glob("python*/site-packages"))
    code = "import importlib.metadata as m, orders; print(m.version('orders'), orders.__file__)"
    assert run_python(venv, code) == f"2.0 {site / 'orders' / '__init__.py'}"
    assert sorted(p.name for p in (site / "orders").glob("*.py")) == ["__init__.py", "added.py"]
    assert not list((site / "orders").glob("__pycache__/dropped.*"))
    assert list((site / "orders").glob("__pycache__/added.*.pyc")), "not compiled at install"
    assert [p.name for p in site.glob("orders-*.dist-info")] == ["orders-2.0.dist-info"]
    # installer ran from its wheel: it is not a package of the release.
    assert run_python(venv, "import importlib.util as u; print(u.find_spec('installer'))") == "None"
    by_pip = list(site.glob("orders-*.dist-info/INSTALLER"))
    assert [p.read_text().strip() for p in by_pip] == (["pip"] if tool == "pip" else [])
    script = venv / "bin" / "orders-report"
    assert script.read_text().splitlines()[0] == f"#!{venv / 'bin' / 'python'}"
    assert subprocess.run([script], capture_output=True, text=True, check=True).stdout == "two\n"
    # The seed, whose files the copy shares (hard links), is as it was.
    seed_site = next((first / "venv" / "lib").glob("python*/site-packages"))
    assert run_python(first / "venv", code) == f"1.0 {seed_site / 'orders' / '__init__.py'}"
    assert (seed_site / "orders" / "dropped.py").is_file()
    seed_script = first / "venv" / "bin" / "orders-report"
    assert (
        subprocess.run([seed_script], capture_output=True, text=True, check=True).stdout == "one\n"
    )


@pytest.mark.parametrize(
    "names",
    [[], "orders-1.0-py3-none-any.whl", ["../orders-1.0-py3-none-any.whl"],
     ["other-1.0-py3-none-any.whl"], ["source/app.py"]],
)  # fmt: skip
def test_an_install_list_naming_anything_but_the_wheelhouses_wheels_is_refused(
    names: object,
) -> None:
    data = manifest("orders==1.0", {"orders-1.0-py3-none-any.whl": "o" * 64})
    data["install"] = names
    with pytest.raises(stage.ReleaseProblem, match="install list"):
        stage.install_list(data, "/srv/orders/releases/1.0/wheelhouse")


def test_a_release_built_before_the_install_list_installs_with_pip() -> None:
    data = manifest("orders==1.0", {"orders-1.0-py3-none-any.whl": "o" * 64})
    assert stage.install_list(data, "/w") is None
    data["install"] = ["orders-1.0-py3-none-any.whl"]
    assert stage.install_list(data, "/w") == ["/w/orders-1.0-py3-none-any.whl"]
