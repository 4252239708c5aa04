"""The bakery: pages made at build time, with no service, naming the release that baked them; and
again from live data (the document store) when deploykit's bake worker runs it."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from shop.bake import bake
from shop.catalogue import PRODUCTS, load_seed
from shop.docstore import DocumentStore
from shop.settings import ConfigError, Settings


def test_bake_writes_the_pages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPLOYKIT_RELEASE_ID", "20261128-abc123")
    bake(tmp_path / "out")
    index = (tmp_path / "out" / "index.html").read_text()
    catalogue = (tmp_path / "out" / "catalogue" / "index.html").read_text()
    assert "Baked by release <code>20261128-abc123</code>" in index
    assert "Baked by release <code>20261128-abc123</code>" in catalogue
    for product in load_seed().products.values():
        assert product["name"] in catalogue
    assert 'href="/catalogue/"' in index
    assert "sold out" in catalogue  # the seed has one product out of stock


def test_bake_without_a_release_and_deterministic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DEPLOYKIT_RELEASE_ID", raising=False)
    bake(tmp_path / "one")
    bake(tmp_path / "two")
    for page in ("index.html", "catalogue/index.html"):
        one = (tmp_path / "one" / page).read_bytes()
        assert one == (tmp_path / "two" / page).read_bytes()
        assert b"Baked by release" not in one


def test_bake_needs_no_service_client(tmp_path: Path) -> None:
    # At build time on the controller: no Redis, no database, no broker, not even their clients.
    code = (
        "import sys, pathlib, shop.bake\n"
        "shop.bake.bake(pathlib.Path(sys.argv[1]))\n"
        "heavy = {'redis', 'psycopg', 'pymongo', 'celery', 'kombu', 'flask'}\n"
        "print(sorted(heavy & {name.split('.')[0] for name in sys.modules}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.stdout.strip() == "[]"
    assert (tmp_path / "catalogue" / "index.html").is_file()


def test_a_live_bake_reads_the_document_store(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    settings: Settings,
    shop_store: DocumentStore,
) -> None:
    # deploykit's bake worker: the same bake(out_dir), with DEPLOYKIT_BAKE=live and the settings.
    product_id = f"live-{uuid.uuid4().hex[:8]}"
    name = f"Sencha picked {product_id}"
    shop_store.put(PRODUCTS, product_id, {"name": name, "category": "tea", "price_cents": 450})
    monkeypatch.setenv("DEPLOYKIT_BAKE", "live")
    monkeypatch.setenv("DOCSTORE_ENGINE", settings.docstore_engine)
    monkeypatch.setenv("DOCSTORE_URL", settings.docstore_url)
    try:
        bake(tmp_path / "out")
    finally:
        shop_store.delete(PRODUCTS, product_id)
    catalogue = (tmp_path / "out" / "catalogue" / "index.html").read_text()
    assert name in catalogue
    for product in load_seed().products.values():
        assert product["name"] in catalogue


def test_a_live_bake_without_its_settings_fails_naming_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEPLOYKIT_BAKE", "live")
    monkeypatch.delenv("DOCSTORE_URL", raising=False)
    with pytest.raises(ConfigError, match="DOCSTORE_URL"):
        bake(tmp_path / "out")
