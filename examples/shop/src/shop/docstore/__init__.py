"""The document store: one interface (`DocumentStore`), two engines, chosen by DOCSTORE_ENGINE."""

from __future__ import annotations

from shop.docstore.base import (
    MAX_LIMIT,
    DocstoreError,
    DocstoreUnavailable,
    Document,
    DocumentStore,
    InvalidDocument,
    prefix_upper_bound,
)

__all__ = [
    "MAX_LIMIT",
    "DocstoreError",
    "DocstoreUnavailable",
    "Document",
    "DocumentStore",
    "InvalidDocument",
    "open_store",
    "prefix_upper_bound",
]


def open_store(engine: str, url: str) -> DocumentStore:
    """The store for DOCSTORE_ENGINE / DOCSTORE_URL. Nothing connects until the first call."""
    if engine == "postgresql":
        from shop.docstore.postgres import PostgresStore  # noqa: PLC0415 - only the engine in use

        return PostgresStore(url)
    if engine == "mongodb":
        from shop.docstore.mongo import MongoStore  # noqa: PLC0415 - only the engine in use

        return MongoStore(url)
    raise ValueError(f"unknown document store engine {engine!r} (postgresql or mongodb)")
