"""`shop-migrate`: idempotent, seeds only what is missing."""

from __future__ import annotations

import subprocess
import sys

import pytest
from shop.catalogue import CATEGORIES, PRODUCTS
from shop.docstore import open_store
from shop.migrate import main


def test_migrate_twice(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCSTORE_ENGINE", "postgresql")
    monkeypatch.setenv("DOCSTORE_URL", postgres_url)
    assert main([]) == 0
    store = open_store("postgresql", postgres_url)
    try:
        original = store.get(PRODUCTS, "2")
        assert original is not None
        store.put(PRODUCTS, "2", {**original, "stock": 1234})  # an edit made through the app
        assert main([]) == 0
        assert main(["--no-seed"]) == 0
        assert store.get(PRODUCTS, "2") == {**original, "stock": 1234}  # never overwritten
        assert store.get(CATEGORIES, "tea") is not None
    finally:
        store.put(PRODUCTS, "2", original)  # type: ignore[arg-type]
        store.close()


def test_migrate_entry_point_without_settings() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "shop.migrate"], check=False, capture_output=True, text=True, env={}
    )
    assert done.returncode == 2
    assert "DOCSTORE_ENGINE, DOCSTORE_URL" in done.stderr


def test_migrate_dead_store(monkeypatch: pytest.MonkeyPatch) -> None:
    from shop_test_support import dead_url  # noqa: PLC0415

    monkeypatch.setenv("DOCSTORE_ENGINE", "postgresql")
    monkeypatch.setenv("DOCSTORE_URL", dead_url("postgresql"))
    assert main([]) == 1
