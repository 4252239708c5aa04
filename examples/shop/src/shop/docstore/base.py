"""The one interface the application talks to its database through.

Data is denormalised from the start: a *collection* holds whole JSON documents, each under a
string *key*, and is only ever read by key (or by key prefix, in key order). There are no joins:
whatever needs two documents reads both and combines them in application code. That shape is the
same in both engines, so the application never knows which one it runs on:

- PostgreSQL: a table per collection, ``(key text primary key, doc jsonb, updated_at)``;
- MongoDB: a collection per collection, ``{_id: key, doc: {...}, updated_at}``.

Documents are JSON (objects, arrays, strings, numbers, booleans, null): they are checked on the way
in, so a document that one engine would store and the other would refuse is refused by both.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

Document = dict[str, Any]

#: Collection names end up in SQL identifiers and MongoDB namespaces: keep them boring.
COLLECTION_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
MAX_KEY_LENGTH = 512
MAX_LIMIT = 1000


class DocstoreError(RuntimeError):
    """A document store operation failed."""


class DocstoreUnavailable(DocstoreError):
    """The document store cannot be reached in time (down, unreachable, timed out, refused us)."""


class InvalidDocument(ValueError):
    """A collection name, key or document the interface does not accept."""


@runtime_checkable
class DocumentStore(Protocol):
    """Documents by key, in collections; no joins, no queries on content."""

    engine: str

    def get(self, collection: str, key: str) -> Document | None:
        """The document stored under `key`, or None."""
        ...

    def put(self, collection: str, key: str, doc: Document) -> None:
        """Store `doc` under `key`, replacing any document there."""
        ...

    def insert(self, collection: str, key: str, doc: Document) -> bool:
        """Store `doc` under `key` only if the key is free; True if it was stored."""
        ...

    def delete(self, collection: str, key: str) -> bool:
        """Remove the document under `key`; True if there was one."""
        ...

    def find(
        self, collection: str, prefix: str = "", limit: int = 100, after: str | None = None
    ) -> list[tuple[str, Document]]:
        """Up to `limit` (key, document) pairs whose key starts with `prefix`, in key order.

        `after` pages through a collection: only keys greater than it are returned (pass the
        last key of the previous page).
        """
        ...

    def ping(self) -> None:
        """Return if the store answers; raise DocstoreUnavailable otherwise."""
        ...

    def ensure_collections(self, collections: Iterable[str]) -> None:
        """Create the collections that do not exist yet (idempotent, safe to run concurrently)."""
        ...

    def close(self) -> None:
        """Release connections (the store reconnects if used again)."""
        ...


def check_collection(collection: str) -> str:
    if not isinstance(collection, str) or not COLLECTION_NAME.match(collection):
        raise InvalidDocument(
            f"collection name {collection!r} must match {COLLECTION_NAME.pattern}"
        )
    return collection


def check_key(key: str) -> str:
    if not isinstance(key, str) or not key:
        raise InvalidDocument("a key is a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidDocument(f"a key is at most {MAX_KEY_LENGTH} characters")
    if "\x00" in key:
        raise InvalidDocument("a key cannot contain NUL")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidDocument("a key must be valid Unicode text") from exc
    return key


def check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidDocument(f"limit must be an integer from 1 to {MAX_LIMIT}")
    return limit


def normalise(doc: Document) -> Document:
    """A plain-JSON copy of `doc` (what both engines store identically), or InvalidDocument."""
    if not isinstance(doc, dict):
        raise InvalidDocument("a document is a JSON object (a dict)")
    try:
        copy: Document = json.loads(json.dumps(doc, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidDocument(f"a document must be plain JSON: {exc}") from exc
    return copy


def prefix_upper_bound(prefix: str) -> str | None:
    """The least string greater than every string that starts with `prefix` (None: no bound).

    Both engines compare keys by code point (PostgreSQL with the "C" collation on the key column,
    MongoDB always), so ``prefix <= key < bound`` selects exactly the keys with that prefix and
    is answered from the primary key's index.
    """
    chars = list(prefix)
    while chars:
        code = ord(chars[-1])
        if code < 0x10FFFF:
            code += 1
            if 0xD800 <= code <= 0xDFFF:  # surrogates are not characters: skip them
                code = 0xE000
            chars[-1] = chr(code)
            return "".join(chars)
        chars.pop()
    return None
