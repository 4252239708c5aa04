"""Configuration from the environment only, and the application contract in pyproject.toml."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from shop.settings import OPTIONAL_SETTINGS, SETTINGS, ConfigError, Settings

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
ENV = {
    "SECRET_KEY": "s3cret",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "BROKER_URL": "amqp://app:pw@127.0.0.1:5672/app",
    "DOCSTORE_ENGINE": "postgresql",
    "DOCSTORE_URL": "postgresql://app:pw@127.0.0.1:5432/app",
}


def test_from_env() -> None:
    settings = Settings.from_env({**ENV, "DEPLOYKIT_RELEASE_ID": "r42"})
    assert settings.secret_key == ENV["SECRET_KEY"]
    assert settings.release_id == "r42"
    assert Settings.from_env(ENV).release_id is None


def test_missing_settings_are_named() -> None:
    env = {k: v for k, v in ENV.items() if k not in ("SECRET_KEY", "REDIS_URL")}
    with pytest.raises(ConfigError, match="SECRET_KEY, REDIS_URL"):
        Settings.from_env(env)
    # A worker needs only some of them.
    assert Settings.from_env(env, required=("BROKER_URL", "DOCSTORE_ENGINE", "DOCSTORE_URL"))


def test_engine_is_checked() -> None:
    with pytest.raises(ConfigError, match="DOCSTORE_ENGINE"):
        Settings.from_env({**ENV, "DOCSTORE_ENGINE": "mysql"})


def test_pyproject_declares_the_contract() -> None:
    project = tomllib.loads(PYPROJECT.read_text())
    declared = project["tool"]["deploykit"]
    assert re.fullmatch(r"[a-z][a-z0-9-]*", declared["name"])
    assert declared["name"] == "shop"
    assert declared["health_path"] == "/healthz"
    assert sorted(declared["settings"]) == sorted(SETTINGS + OPTIONAL_SETTINGS)
    for entry in ("wsgi", "worker", "bake"):
        module, _, attribute = declared[entry].partition(":")
        assert attribute, entry
        assert hasattr(importlib.import_module(module), "__getattr__") or hasattr(
            importlib.import_module(module), attribute
        )
    from shop.bake import bake  # noqa: PLC0415

    assert declared["bake"] == f"{bake.__module__}:{bake.__name__}"
    # Every dependency is pinned exactly.
    for requirement in project["project"]["dependencies"]:
        assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][0-9A-Za-z.]*", requirement), requirement


def test_entry_points_are_lazy_and_read_the_environment() -> None:
    # Importing needs no configuration; the first access to the entry point reads it.
    code = (
        "import shop.web, shop.jobs\n"
        "for module, name in ((shop.web, 'app'), (shop.jobs, 'celery_app')):\n"
        "    try:\n"
        "        getattr(module, name)\n"
        "    except Exception as exc:\n"
        "        print(type(exc).__name__, exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={}
    )
    lines = done.stdout.splitlines()
    assert lines[0].startswith("ConfigError missing environment variable(s): SECRET_KEY")
    assert lines[1].startswith("ConfigError missing environment variable(s): BROKER_URL")

    done = subprocess.run(
        [sys.executable, "-c", "import shop.web, shop.jobs; print(shop.web.app.name, "
         "shop.jobs.celery_app.conf.task_acks_late)"],
        capture_output=True, text=True, check=True, env=ENV,
    )  # fmt: skip
    assert done.stdout.split() == ["shop", "True"]
