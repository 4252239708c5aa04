"""Why sessions have no TTL: under a volatile-* policy Redis evicts cache keys, never sessions.

A Redis of its own (a few MB, `volatile-lru`, as deploykit's Redis role configures it) is filled
with cached objects well past its memory limit; every session must survive it.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis
from shop.cache import ObjectCache
from shop.settings import Settings
from shop.web import create_app
from shop_test_support import closed_port, dead_url


@pytest.fixture
def small_redis() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(
            "redis-server is not installed (examples/shop/scripts/test-services installs it)"
        )
    port = closed_port()
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--maxmemory", "4mb", "--maxmemory-policy", "volatile-lru"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                server.kill()
                raise
            time.sleep(0.05)
    yield url
    server.terminate()
    server.wait(10)


def test_sessions_survive_memory_pressure_cache_is_evicted(small_redis: str) -> None:
    settings = Settings(
        secret_key="eviction-test-key-0123456789",  # noqa: S106 - a throwaway test key
        redis_url=small_redis,
        broker_url="memory://",
        docstore_engine="postgresql",
        docstore_url=dead_url("postgresql"),  # logging in needs no document store
    )
    app = create_app(settings)
    cookies = []
    for n in range(100):
        client = app.test_client()
        assert client.post("/login", json={"user": f"user{n}"}).status_code == 200
        cookie = client.get_cookie("shop_session")
        assert cookie is not None
        cookies.append(cookie.value)

    cache = ObjectCache(redis.Redis.from_url(small_redis, decode_responses=True))
    blob = "x" * 2000
    for n in range(4000):  # about 8 MB of cached objects into a 4 MB Redis
        cache.get_or_build("product", str(n), lambda n=n: {"n": n, "blob": blob})  # type: ignore[misc]

    raw = redis.Redis.from_url(small_redis)
    assert int(raw.info("stats")["evicted_keys"]) > 0
    assert sum(raw.exists(cache.key("product", str(n))) for n in range(4000)) < 4000
    for n, value in enumerate(cookies):
        client = app.test_client()
        client.set_cookie("shop_session", value)
        response = client.get("/me")
        assert response.status_code == 200, n
        assert response.json is not None
        assert response.json["user"] == f"user{n}"
