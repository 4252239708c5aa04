"""Where the shop's tests find their services, and how they say what is missing.

- Redis: REDIS_URL (default redis://127.0.0.1:6379/0)
- PostgreSQL: DOCSTORE_URL when it is a postgresql:// URL (default
  postgresql://shop:shop@127.0.0.1:5432/shop)
- MongoDB: MONGODB_URL (or DOCSTORE_URL when it is a mongodb:// URL); none by default, as Debian
  does not package MongoDB.

`examples/shop/scripts/test-services` starts Redis and PostgreSQL on loopback. Every service's
tests take one path, `unavailable()`: a service that cannot be reached skips its tests with a
reason that says what is missing (-ra prints it in the summary); with SHOP_REQUIRE_SERVICES=1 (CI)
it fails them instead, unless NOT_PROVIDED lists the service with the reason this machine cannot
have it (MongoDB: none to start), and no URL was given for it.
"""

from __future__ import annotations

import functools
import os
import socket
from typing import Any, NoReturn

import pytest
import redis

_DOCSTORE_URL = os.environ.get("DOCSTORE_URL", "")
REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
POSTGRES_URL = (
    _DOCSTORE_URL
    if _DOCSTORE_URL.startswith(("postgresql://", "postgres://"))
    else "postgresql://shop:shop@127.0.0.1:5432/shop"
)
MONGODB_URL = os.environ.get("MONGODB_URL") or (
    _DOCSTORE_URL if _DOCSTORE_URL.startswith(("mongodb://", "mongodb+srv://")) else ""
)
REQUIRE_SERVICES = os.environ.get("SHOP_REQUIRE_SERVICES") == "1"
HOW = "start Redis and PostgreSQL with examples/shop/scripts/test-services"
ENGINES = ("postgresql", "mongodb")


# The services test-services cannot start here, each with the reason. Their tests are skipped
# when no URL names a server, even with SHOP_REQUIRE_SERVICES=1; a URL given and not answering
# fails them there, as for any other service. Keep it short.
NOT_PROVIDED = {
    "MongoDB": (
        "Debian does not package MongoDB and repo.mongodb.org cannot be reached from these "
        "machines, so test-services cannot start a server; the MongoDB backend's code runs "
        "against mongomock instead, and these run when MONGODB_URL=mongodb://[user:pass@]"
        "host:port/db names a server"
    ),
}


def unavailable(service: str, problem: str, *, url_given: bool = True) -> NoReturn:
    """Skip the test, saying which service is missing and why; fail it instead under
    SHOP_REQUIRE_SERVICES=1, unless NOT_PROVIDED lists the service and no URL was given."""
    message = f"{service}: {problem}"
    if not url_given and service in NOT_PROVIDED:
        pytest.skip(f"{message}; not provided here: {NOT_PROVIDED[service]}")
    if REQUIRE_SERVICES:
        pytest.fail(f"{message} (SHOP_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(message)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


@functools.cache
def redis_problem(url: str) -> str | None:
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping()
    except redis.RedisError as exc:
        return _one_line(exc)
    return None


@functools.cache
def postgres_problem(url: str) -> str | None:
    import psycopg  # noqa: PLC0415

    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return _one_line(exc)
    return None


@functools.cache
def mongodb_problem(url: str) -> str | None:
    from pymongo import MongoClient  # noqa: PLC0415
    from pymongo.errors import PyMongoError  # noqa: PLC0415

    client: MongoClient[dict[str, Any]] = MongoClient(url, serverSelectionTimeoutMS=1500)
    try:
        client.get_default_database(default="app").command("ping")
    except PyMongoError as exc:
        return _one_line(exc)
    finally:
        client.close()
    return None


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def dead_url(engine: str) -> str:
    """A document store URL that refuses connections."""
    if engine == "postgresql":
        return f"postgresql://shop:shop@127.0.0.1:{closed_port()}/shop"
    return f"mongodb://127.0.0.1:{closed_port()}/app"
