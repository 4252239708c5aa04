"""The DocumentStore interface, the same tests on both engines, against real servers."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from shop.docstore import (
    MAX_LIMIT,
    DocstoreUnavailable,
    DocumentStore,
    InvalidDocument,
    open_store,
    prefix_upper_bound,
)
from shop_test_support import ENGINES, dead_url


def test_is_a_document_store(store: DocumentStore) -> None:
    assert isinstance(store, DocumentStore)
    assert store.engine in ENGINES


def test_put_get_replace_delete(store: DocumentStore, collection: str) -> None:
    assert store.get(collection, "p1") is None
    doc = {"name": "Sencha", "price_cents": 990, "tags": ["green"], "nested": {"a": [1, None]}}
    store.put(collection, "p1", doc)
    assert store.get(collection, "p1") == doc

    store.put(collection, "p1", {"name": "Sencha", "price_cents": 1090})
    assert store.get(collection, "p1") == {"name": "Sencha", "price_cents": 1090}

    assert store.delete(collection, "p1") is True
    assert store.delete(collection, "p1") is False
    assert store.get(collection, "p1") is None


def test_insert_only_when_absent(store: DocumentStore, collection: str) -> None:
    assert store.insert(collection, "job-1", {"status": "pending"}) is True
    assert store.insert(collection, "job-1", {"status": "other"}) is False
    assert store.get(collection, "job-1") == {"status": "pending"}


def test_documents_are_plain_json(store: DocumentStore, collection: str) -> None:
    store.put(collection, "k", {"tuple": (1, 2), "float": 1.5, "unicode": "thé ☕", "empty": {}})
    assert store.get(collection, "k") == {
        "tuple": [1, 2],
        "float": 1.5,
        "unicode": "thé ☕",
        "empty": {},
    }
    for bad in ({"nan": float("nan")}, {"set": {1, 2}}, ["not", "a", "dict"]):
        with pytest.raises(InvalidDocument):
            store.put(collection, "bad", bad)  # type: ignore[arg-type]
    assert store.get(collection, "bad") is None


def test_names_and_keys_are_checked(store: DocumentStore, collection: str) -> None:
    for name in ("Products", "1st", "a-b", "x; DROP TABLE y", ""):
        with pytest.raises(InvalidDocument):
            store.get(name, "k")
    for key in ("", "a\x00b", "k" * 513):
        with pytest.raises(InvalidDocument):
            store.put(collection, key, {})
    for limit in (0, MAX_LIMIT + 1):
        with pytest.raises(InvalidDocument):
            store.find(collection, limit=limit)


def test_find_by_prefix_in_key_order(store: DocumentStore, collection: str) -> None:
    keys = ["order:2", "order:10", "order:1", "orders", "order", "user:1", "ordeR:9", "order:é"]
    for key in keys:
        store.put(collection, key, {"key": key})

    found = store.find(collection, prefix="order:")
    # Code point order (the same on both engines), whatever the database's locale.
    assert [key for key, _ in found] == ["order:1", "order:10", "order:2", "order:é"]
    assert all(doc == {"key": key} for key, doc in found)

    assert [k for k, _ in store.find(collection, prefix="order:", limit=2)] == [
        "order:1",
        "order:10",
    ]
    assert [k for k, _ in store.find(collection)] == sorted(keys)
    assert store.find(collection, prefix="nothing") == []


def test_find_pages_with_after(store: DocumentStore, collection: str) -> None:
    keys = [f"k{i:03d}" for i in range(25)]
    for key in keys:
        store.insert(collection, key, {"n": key})
    pages: list[list[str]] = []
    after: str | None = None
    while True:
        page = [key for key, _ in store.find(collection, prefix="k", limit=10, after=after)]
        if not page:
            break
        pages.append(page)
        after = page[-1]
    assert [len(page) for page in pages] == [10, 10, 5]
    assert [key for page in pages for key in page] == keys


def test_find_prefix_edges(store: DocumentStore, collection: str) -> None:
    top = chr(0x10FFFF)
    for key in ["a", "a" + top, "a" + top + "z", "b", "\ud7ffx", "\ue000"]:
        store.put(collection, key, {})
    assert [k for k, _ in store.find(collection, prefix="a" + top)] == ["a" + top, "a" + top + "z"]
    assert [k for k, _ in store.find(collection, prefix="\ud7ff")] == ["\ud7ffx"]


def test_ensure_collections_is_idempotent_and_concurrent(store: DocumentStore) -> None:
    names = [f"t_{uuid.uuid4().hex[:12]}" for _ in range(3)]
    errors: list[BaseException] = []

    def migrate() -> None:
        try:
            store.ensure_collections(names)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=migrate) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        store.ensure_collections(names)
        for name in names:
            store.put(name, "k", {"ok": True})
            assert store.get(name, "k") == {"ok": True}
    finally:
        for name in names:
            store.drop_collection(name)  # type: ignore[attr-defined]


def test_ping(store: DocumentStore) -> None:
    store.ping()


def test_threads_share_the_store(store: DocumentStore, collection: str) -> None:
    def write(n: int) -> None:
        for i in range(10):
            store.put(collection, f"t{n}-{i}", {"n": n, "i": i})

    threads = [threading.Thread(target=write, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(store.find(collection, limit=1000)) == 60


@pytest.mark.parametrize("engine", ENGINES)
def test_dead_store_fails_fast_and_clearly(engine: str) -> None:
    store = open_store(engine, dead_url(engine))
    for call in (store.ping, lambda: store.get("products", "1")):
        started = time.monotonic()
        with pytest.raises(DocstoreUnavailable, match=engine):
            call()
        assert time.monotonic() - started < 3
    store.close()


def test_prefix_upper_bound() -> None:
    assert prefix_upper_bound("") is None
    assert prefix_upper_bound("abc") == "abd"
    assert prefix_upper_bound("a" + chr(0x10FFFF)) == "b"
    assert prefix_upper_bound(chr(0x10FFFF)) is None
    assert prefix_upper_bound("\ud7ff") == "\ue000"


# --- PostgreSQL only ------------------------------------------------------------------------


def test_postgresql_table_shape(postgres_url: str) -> None:
    import psycopg  # noqa: PLC0415

    store = open_store("postgresql", postgres_url)
    name = f"t_{uuid.uuid4().hex[:12]}"
    store.ensure_collections([name])
    try:
        with psycopg.connect(postgres_url) as conn:
            columns = conn.execute(
                "SELECT column_name, data_type, is_nullable, collation_name"
                " FROM information_schema.columns WHERE table_name = %s ORDER BY ordinal_position",
                (name,),
            ).fetchall()
            primary = conn.execute(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a"
                " ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
                " WHERE i.indrelid = %s::regclass AND i.indisprimary",
                (name,),
            ).fetchall()
    finally:
        store.drop_collection(name)  # type: ignore[attr-defined]
        store.close()
    assert columns == [
        ("key", "text", "NO", "C"),
        ("doc", "jsonb", "NO", None),
        ("updated_at", "timestamp with time zone", "NO", None),
    ]
    assert primary == [("key",)]


def test_postgresql_reconnects_after_losing_its_connection(postgres_url: str) -> None:
    import psycopg  # noqa: PLC0415

    store = open_store("postgresql", postgres_url)
    store.ping()  # one idle connection in the pool now
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        # What a server restart or a failover does to the pool's idle connection.
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'shop' AND pid <> pg_backend_pid()"
            " AND usename = current_user"
        )
    time.sleep(0.2)
    store.ping()  # retried once on a fresh connection: no error
    store.close()


def test_postgresql_statement_timeout(postgres_url: str) -> None:
    from shop.docstore.postgres import PostgresStore  # noqa: PLC0415

    store = PostgresStore(postgres_url, statement_timeout_ms=200)
    started = time.monotonic()
    with pytest.raises(DocstoreUnavailable, match="statement timeout"):
        store._run(lambda conn: conn.execute("SELECT pg_sleep(5)"))
    assert time.monotonic() - started < 2
    store.ping()  # the connection it used is still good (or replaced)
    store.close()
