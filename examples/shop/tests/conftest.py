"""Fixtures: the real services the shop's tests run against (see shop_test_support)."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
import redis
from flask import Flask
from shop.catalogue import COLLECTIONS, seed
from shop.docstore import DocumentStore, open_store
from shop.settings import Settings
from shop.web import create_app
from shop_test_support import (
    ENGINES,
    HOW,
    MONGODB_URL,
    POSTGRES_URL,
    REDIS_URL,
    mongodb_problem,
    postgres_problem,
    redis_problem,
    unavailable,
)


@pytest.fixture(scope="session")
def redis_url() -> str:
    problem = redis_problem(REDIS_URL)
    if problem:
        unavailable("Redis", f"not reachable at {REDIS_URL}: {problem}; {HOW}")
    return REDIS_URL


@pytest.fixture(scope="session")
def postgres_url() -> str:
    problem = postgres_problem(POSTGRES_URL)
    if problem:
        unavailable("PostgreSQL", f"not reachable at {POSTGRES_URL}: {problem}; {HOW}")
    return POSTGRES_URL


@pytest.fixture(scope="session")
def mongodb_url() -> str:
    if not MONGODB_URL:
        unavailable("MongoDB", "MONGODB_URL is not set", url_given=False)
    problem = mongodb_problem(MONGODB_URL)
    if problem:
        unavailable("MongoDB", f"not reachable at MONGODB_URL={MONGODB_URL}: {problem}")
    return MONGODB_URL


@pytest.fixture(params=[*ENGINES, "mongomock"])
def engine_url(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """(engine, url) of each document store engine that can be reached.

    "mongomock" runs the MongoDB backend's code against mongomock, an in-process imitation of a
    MongoDB server, so that it is exercised even where no real server is available; it does not
    replace the real-server run ("mongodb"), which needs MONGODB_URL.
    """
    name: str = request.param
    if name == "mongomock":
        import mongomock  # noqa: PLC0415

        clients: dict[str, Any] = {}

        def client(url: str, **_options: Any) -> Any:  # one shared "server" per URL
            return clients.setdefault(url, mongomock.MongoClient(url))

        monkeypatch.setattr("shop.docstore.mongo.MongoClient", client)
        return "mongodb", f"mongodb://mongomock-{uuid.uuid4().hex[:8]}.invalid:27017/app"
    url: str = request.getfixturevalue(f"{'postgres' if name == 'postgresql' else name}_url")
    return name, url


@pytest.fixture
def store(engine_url: tuple[str, str]) -> Iterator[DocumentStore]:
    opened = open_store(*engine_url)
    yield opened
    opened.close()


@pytest.fixture
def collection(store: DocumentStore) -> Iterator[str]:
    """A fresh collection of its own for one test, removed afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    store.ensure_collections([name])
    yield name
    store.drop_collection(name)  # type: ignore[attr-defined]


@pytest.fixture
def redis_client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, decode_responses=True)


@pytest.fixture
def settings(redis_url: str, engine_url: tuple[str, str]) -> Settings:
    engine, url = engine_url
    return Settings(
        secret_key=secrets.token_urlsafe(32),
        redis_url=redis_url,
        broker_url="memory://",
        docstore_engine=engine,
        docstore_url=url,
        release_id="test-release-1",
        report_seconds=0.0,
    )


@pytest.fixture
def shop_store(settings: Settings) -> Iterator[DocumentStore]:
    """The shop's own collections, migrated and seeded (as `shop-migrate` does)."""
    opened = open_store(settings.docstore_engine, settings.docstore_url)
    opened.ensure_collections(COLLECTIONS)
    seed(opened)
    yield opened
    opened.close()


@pytest.fixture
def make_app(settings: Settings, shop_store: DocumentStore) -> Iterator[Callable[..., Flask]]:
    """Make clones: each call is a separate application object (another gunicorn process)."""
    made: list[Flask] = []

    def make(**overrides: Any) -> Flask:
        app = create_app(replace(settings, **overrides))
        made.append(app)
        return app

    yield make
    for app in made:
        app.extensions["shop"].store.close()
