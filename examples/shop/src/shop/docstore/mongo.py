"""MongoDB backend: a collection per collection, ``{_id: key, doc: {...}, updated_at}``."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, TypeVar

from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import CollectionInvalid, DuplicateKeyError, PyMongoError

from shop.docstore.base import (
    DocstoreUnavailable,
    Document,
    check_collection,
    check_key,
    check_limit,
    normalise,
    prefix_upper_bound,
)

T = TypeVar("T")
Raw = dict[str, Any]


class MongoStore:
    """A `DocumentStore` on MongoDB (a replica set in production) through pymongo.

    The client is made on first use in each process (pymongo's clients do not survive a fork) and
    with short timeouts: no reachable primary within `server_selection_ms` surfaces as
    `DocstoreUnavailable`, as does a stalled socket after `socket_timeout_ms`. The database is the
    one named in the URL (``mongodb://.../app?...``).
    """

    engine = "mongodb"

    def __init__(
        self,
        url: str,
        *,
        server_selection_ms: int = 2000,
        connect_timeout_ms: int = 2000,
        socket_timeout_ms: int = 5000,
    ) -> None:
        self._url = url
        self._options: dict[str, Any] = {
            "serverSelectionTimeoutMS": server_selection_ms,
            "connectTimeoutMS": connect_timeout_ms,
            "socketTimeoutMS": socket_timeout_ms,
            "appname": "shop",
            "tz_aware": True,
            "connect": False,
        }
        self._client: MongoClient[Raw] | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def _database(self) -> Database[Raw]:
        with self._lock:
            if self._client is None or self._pid != os.getpid():
                try:
                    self._client = MongoClient(self._url, **self._options)
                except (PyMongoError, ValueError) as exc:  # ValueError: a malformed URL
                    raise DocstoreUnavailable(f"mongodb: {exc}") from exc
                self._pid = os.getpid()
            client = self._client
        return client.get_default_database(default="app")

    def _collection(self, collection: str) -> Collection[Raw]:
        return self._database()[check_collection(collection)]

    def _run(self, work: Callable[[], T]) -> T:
        try:
            return work()
        except DuplicateKeyError:
            raise
        except PyMongoError as exc:
            raise DocstoreUnavailable(f"mongodb: {_one_line(exc)}") from exc

    @staticmethod
    def _record(key: str, doc: Document) -> Raw:
        return {"_id": key, "doc": normalise(doc), "updated_at": datetime.now(UTC)}

    # -- the interface --------------------------------------------------------------------------

    def get(self, collection: str, key: str) -> Document | None:
        check_key(key)
        coll = self._collection(collection)
        raw = self._run(lambda: coll.find_one({"_id": key}, {"doc": 1}))
        return None if raw is None else dict(raw["doc"])

    def put(self, collection: str, key: str, doc: Document) -> None:
        record = self._record(check_key(key), doc)
        coll = self._collection(collection)

        def work() -> None:
            try:
                coll.replace_one({"_id": key}, record, upsert=True)
            except DuplicateKeyError:
                # Two upserts of a new key raced and the other one inserted first: replace it.
                coll.replace_one({"_id": key}, record, upsert=True)

        self._run(work)

    def insert(self, collection: str, key: str, doc: Document) -> bool:
        record = self._record(check_key(key), doc)
        coll = self._collection(collection)
        try:
            self._run(lambda: coll.insert_one(record))
        except DuplicateKeyError:
            return False
        return True

    def delete(self, collection: str, key: str) -> bool:
        check_key(key)
        coll = self._collection(collection)
        return self._run(lambda: coll.delete_one({"_id": key}).deleted_count == 1)

    def find(
        self, collection: str, prefix: str = "", limit: int = 100, after: str | None = None
    ) -> list[tuple[str, Document]]:
        check_limit(limit)
        coll = self._collection(collection)
        # $type keeps the range to string keys, which are the only ones this interface writes.
        bounds: Raw = {"$gte": prefix, "$type": "string"}
        upper = prefix_upper_bound(prefix)
        if upper is not None:
            bounds["$lt"] = upper
        if after is not None:
            bounds["$gt"] = after
        query: Raw = {"_id": bounds}

        def work() -> list[tuple[str, Document]]:
            cursor = coll.find(query, {"doc": 1}).sort("_id", 1).limit(limit)
            return [(raw["_id"], dict(raw["doc"])) for raw in cursor]

        return self._run(work)

    def ping(self) -> None:
        database = self._database()
        self._run(lambda: database.command("ping"))

    def ensure_collections(self, collections: Iterable[str]) -> None:
        names = [check_collection(name) for name in collections]
        database = self._database()

        def work() -> None:
            existing = set(database.list_collection_names())
            for name in names:
                if name in existing:
                    continue
                with contextlib.suppress(CollectionInvalid):  # another node made it meanwhile
                    database.create_collection(name)

        self._run(work)

    def drop_collection(self, collection: str) -> None:
        """Remove a collection and its documents (a *contract* step; tests use it to clean up)."""
        database = self._database()
        name = check_collection(collection)
        self._run(lambda: database.drop_collection(name))

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
            owned = self._pid == os.getpid()
        if client is not None and owned:
            client.close()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text or type(exc).__name__)[:300]
