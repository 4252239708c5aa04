"""deploykit.fleet.stage: which kept release may seed a new release's virtualenv (the same
dependency wheels, byte for byte; never the application's own wheel, never an incomplete venv)."""

from __future__ import annotations

import json
from pathlib import Path

from ansible_collections.deploykit.fleet.plugins.modules import stage


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
    wheels = {**DEPS, "my_app-1.0-py3-none-any.whl": "c" * 64}
    assert stage.dependencies(manifest("my-app==1.0", wheels)) == {
        f"wheelhouse/{name}": digest for name, digest in DEPS.items()
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
