"""PostgreSQL backend: JSONB documents in a table per collection, read by key, never joined."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import psycopg
from psycopg import pq, sql
from psycopg.types.json import Jsonb

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

#: Held (per transaction) while the schema changes, so that app nodes migrating at the same time
#: queue instead of racing (concurrent CREATE TABLE IF NOT EXISTS can fail on pg_type).
MIGRATION_LOCK = 0x73686F70  # "shop"

# The key column uses the "C" collation: code point order (as MongoDB's), and an index that
# answers range scans on a key prefix whatever the database's locale.
_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS {table} (
    key text COLLATE "C" PRIMARY KEY,
    doc jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
)
"""
# Expand step kept for tables made by the first release, which had no updated_at column.
_ADD_UPDATED_AT = (
    "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS updated_at timestamptz NOT NULL DEFAULT now()"
)


class PostgresStore:
    """A `DocumentStore` on PostgreSQL through psycopg 3.

    Connections are made on first use (never before gunicorn or Celery fork), kept in a small
    LIFO pool of idle connections shared by the threads of one process, and made with short
    timeouts: a dead or unreachable server costs at most `connect_timeout` seconds and surfaces as
    `DocstoreUnavailable`, a runaway statement is cancelled after `statement_timeout_ms`.
    """

    engine = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: int = 2,
        statement_timeout_ms: int = 5000,
        max_idle: int = 4,
    ) -> None:
        self._url = url
        self._connect_kwargs: dict[str, Any] = {
            "connect_timeout": connect_timeout,
            "autocommit": True,
            "application_name": "shop",
            "options": (
                f"-c statement_timeout={statement_timeout_ms}"
                f" -c lock_timeout={statement_timeout_ms}"
                " -c idle_in_transaction_session_timeout=60000"
            ),
        }
        self._max_idle = max_idle
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()

    # -- connections --------------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self._url, **self._connect_kwargs)
        except psycopg.Error as exc:
            raise DocstoreUnavailable(f"postgresql: {_one_line(exc)}") from exc

    def _checkout(self) -> psycopg.Connection[Any]:
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's connections are not ours
                self._idle = []
                self._pid = os.getpid()
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    return conn
        return self._connect()

    def _checkin(self, conn: psycopg.Connection[Any]) -> None:
        if conn.closed or conn.broken or conn.info.transaction_status != pq.TransactionStatus.IDLE:
            conn.close()
            return
        with self._lock:
            if self._pid == os.getpid() and len(self._idle) < self._max_idle:
                self._idle.append(conn)
                return
        conn.close()

    def _run(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        # An idle connection may have died since it was last used (server restart, failover,
        # idle timeout): that is retried once, on a fresh connection. Other errors are not.
        for attempt in (1, 2):
            conn = self._checkout()
            try:
                result = work(conn)
            except psycopg.OperationalError as exc:
                broken = conn.broken or conn.closed
                conn.close()
                if broken and attempt == 1:
                    continue
                raise DocstoreUnavailable(f"postgresql: {_one_line(exc)}") from exc
            except BaseException:
                conn.close()
                raise
            self._checkin(conn)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    # -- the interface --------------------------------------------------------------------------

    def get(self, collection: str, key: str) -> Document | None:
        query = sql.SQL("SELECT doc FROM {} WHERE key = %s").format(_table(collection))
        check_key(key)

        def work(conn: psycopg.Connection[Any]) -> Document | None:
            row = conn.execute(query, (key,)).fetchone()
            return None if row is None else dict(row[0])

        return self._run(work)

    def put(self, collection: str, key: str, doc: Document) -> None:
        query = sql.SQL(
            "INSERT INTO {} (key, doc, updated_at) VALUES (%s, %s, now())"
            " ON CONFLICT (key) DO UPDATE SET doc = EXCLUDED.doc, updated_at = EXCLUDED.updated_at"
        ).format(_table(collection))
        params = (check_key(key), Jsonb(normalise(doc)))
        self._run(lambda conn: conn.execute(query, params))

    def insert(self, collection: str, key: str, doc: Document) -> bool:
        query = sql.SQL(
            "INSERT INTO {} (key, doc, updated_at) VALUES (%s, %s, now())"
            " ON CONFLICT (key) DO NOTHING"
        ).format(_table(collection))
        params = (check_key(key), Jsonb(normalise(doc)))
        return self._run(lambda conn: conn.execute(query, params).rowcount == 1)

    def delete(self, collection: str, key: str) -> bool:
        query = sql.SQL("DELETE FROM {} WHERE key = %s").format(_table(collection))
        params = (check_key(key),)
        return self._run(lambda conn: conn.execute(query, params).rowcount == 1)

    def find(
        self, collection: str, prefix: str = "", limit: int = 100, after: str | None = None
    ) -> list[tuple[str, Document]]:
        table = _table(collection)
        check_limit(limit)
        conditions = [sql.SQL("key >= %s")]
        params: list[object] = [prefix]
        upper = prefix_upper_bound(prefix)
        if upper is not None:
            conditions.append(sql.SQL("key < %s"))
            params.append(upper)
        if after is not None:
            conditions.append(sql.SQL("key > %s"))
            params.append(after)
        params.append(limit)
        query = sql.SQL("SELECT key, doc FROM {} WHERE {} ORDER BY key LIMIT %s").format(
            table, sql.SQL(" AND ").join(conditions)
        )

        def work(conn: psycopg.Connection[Any]) -> list[tuple[str, Document]]:
            return [(row[0], dict(row[1])) for row in conn.execute(query, params).fetchall()]

        return self._run(work)

    def ping(self) -> None:
        self._run(lambda conn: conn.execute("SELECT 1").fetchone())

    def ensure_collections(self, collections: Iterable[str]) -> None:
        tables = [_table(name) for name in collections]

        def work(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                for table in tables:
                    conn.execute(sql.SQL(_CREATE_TABLE).format(table=table))
                    conn.execute(sql.SQL(_ADD_UPDATED_AT).format(table=table))

        self._run(work)

    def drop_collection(self, collection: str) -> None:
        """Remove a collection and its documents (a *contract* step; tests use it to clean up)."""
        query = sql.SQL("DROP TABLE IF EXISTS {}").format(_table(collection))
        self._run(lambda conn: conn.execute(query))

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _table(collection: str) -> sql.Identifier:
    return sql.Identifier(check_collection(collection))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
