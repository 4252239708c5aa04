"""The web application, through Flask's test client, against the real Redis and document store.

Two application objects made by two `create_app()` calls are two clones: they share nothing but
Redis and the document store, exactly like two gunicorn processes on two app servers.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Callable

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from kombu.exceptions import OperationalError
from shop.cache import DEFAULT_TTL
from shop.jobs import job_queue
from shop.sessions import EXPIRY_INDEX, KEY_PREFIX
from shop.settings import Settings
from shop.web import REDIS_COOLDOWN, RedisCircuitOpen, broker_probe, connect_redis
from shop_test_support import closed_port, dead_url

COOKIE = "shop_session"


def login(client: FlaskClient, user: str = "ann") -> str:
    response = client.post("/login", json={"user": user})
    assert response.status_code == 200, response.json
    cookie = client.get_cookie(COOKIE)
    assert cookie is not None
    return cookie.value


def sid_of(app: Flask, cookie: str) -> str:
    from itsdangerous import Signer  # noqa: PLC0415

    return Signer(app.secret_key, salt="shop.session").unsign(cookie).decode()  # type: ignore[arg-type]


# --- sessions: stateless clones ---------------------------------------------------------------


def test_login_on_one_clone_is_login_on_every_clone(make_app: Callable[..., Flask]) -> None:
    clone_a, clone_b = make_app(), make_app()
    client_a = clone_a.test_client()
    cookie = login(client_a, "ann")

    client_b = clone_b.test_client()
    client_b.set_cookie(COOKIE, cookie)
    response = client_b.get("/me")
    assert response.status_code == 200
    assert response.json is not None
    assert response.json["user"] == "ann"
    assert response.json["clone"]  # which clone answered (its hostname)
    assert response.json["release"] == "test-release-1"

    # A restart is a new application object with nothing in memory: still logged in.
    del clone_a
    restarted = make_app().test_client()
    restarted.set_cookie(COOKIE, cookie)
    assert restarted.get("/me").json == response.json


def test_login_by_form_and_logout(make_app: Callable[..., Flask]) -> None:
    client = make_app().test_client()
    response = client.post("/login", data={"user": "bob"})
    assert response.status_code == 200
    assert client.get("/me").json["user"] == "bob"  # type: ignore[index]
    assert client.post("/logout").status_code == 200
    assert client.get("/me").status_code == 401


def test_not_logged_in_and_bad_input(make_app: Callable[..., Flask]) -> None:
    client = make_app().test_client()
    response = client.get("/me")
    assert response.status_code == 401
    assert response.json is not None
    assert response.json["user"] is None
    for body in ({"user": ""}, {"user": "x" * 65}, {"user": "a b"}, {"name": "ann"}, ["ann"]):
        assert client.post("/login", json=body).status_code == 400
    client.set_cookie(COOKIE, "forged.value")
    assert client.get("/me").status_code == 401


def test_session_is_in_redis_without_ttl(
    make_app: Callable[..., Flask], redis_client: redis.Redis
) -> None:
    app = make_app()
    client = app.test_client()
    sid = sid_of(app, login(client, "carol"))
    key = KEY_PREFIX + sid
    # No TTL: under the volatile-* maxmemory policy a key with a TTL could be evicted.
    assert redis_client.ttl(key) == -1
    record = json.loads(str(redis_client.get(key)))
    assert record["data"]["user"] == "carol"
    assert record["expires"] > time.time() + 6 * 86400
    assert redis_client.zscore(EXPIRY_INDEX, sid) == pytest.approx(record["expires"])


def test_login_rotates_the_session_id(
    make_app: Callable[..., Flask], redis_client: redis.Redis
) -> None:
    app = make_app()
    client = app.test_client()
    first = sid_of(app, login(client, "dan"))
    second = sid_of(app, login(client, "dan"))
    assert first != second
    assert redis_client.exists(KEY_PREFIX + first) == 0
    assert redis_client.exists(KEY_PREFIX + second) == 1


def test_expired_session_is_refused_and_deleted(
    make_app: Callable[..., Flask], redis_client: redis.Redis
) -> None:
    app = make_app()
    client = app.test_client()
    sid = sid_of(app, login(client, "erin"))
    key = KEY_PREFIX + sid
    record = json.loads(str(redis_client.get(key)))
    record["expires"] = time.time() - 1
    redis_client.set(key, json.dumps(record))
    assert client.get("/me").status_code == 401
    assert redis_client.exists(key) == 0


def test_sweep_deletes_expired_sessions(
    make_app: Callable[..., Flask], redis_client: redis.Redis
) -> None:
    app = make_app()
    stale = f"test-stale-{uuid.uuid4().hex}"
    redis_client.set(KEY_PREFIX + stale, json.dumps({"data": {"user": "x"}, "expires": 1.0}))
    redis_client.zadd(EXPIRY_INDEX, {stale: 1.0})
    login(app.test_client(), "fay")  # a new session sweeps a batch of expired ones
    assert redis_client.exists(KEY_PREFIX + stale) == 0
    assert redis_client.zscore(EXPIRY_INDEX, stale) is None


# --- the cache: whole objects, cache-aside, invalidated on write ------------------------------


def new_product(client: FlaskClient) -> str:
    product_id = f"t-{uuid.uuid4().hex[:12]}"
    response = client.put(
        f"/products/{product_id}",
        json={"name": "Test tea", "category": "tea", "price_cents": 500, "stock": 3},
    )
    assert response.status_code == 201, response.json
    return product_id


def test_cache_miss_hit_then_miss_after_write(
    make_app: Callable[..., Flask], redis_client: redis.Redis
) -> None:
    clone_a, clone_b = make_app().test_client(), make_app().test_client()
    login(clone_a)
    product_id = new_product(clone_a)

    first = clone_a.get(f"/products/{product_id}")
    assert (first.status_code, first.headers["X-Cache"]) == (200, "miss")
    assert first.json is not None
    assert first.json["category"]["name"] == "Tea"  # the category, joined in application code
    assert first.json["price"] == "5.00"
    second = clone_b.get(f"/products/{product_id}")  # another clone, the same cache
    assert (second.headers["X-Cache"], second.json) == ("hit", first.json)

    ttl = redis_client.ttl(f"cache:product:{product_id}")
    assert 0 < ttl <= DEFAULT_TTL  # cache keys always have a TTL (evictable under volatile-*)

    changed = clone_a.post(f"/products/{product_id}", json={"stock": 0, "price_cents": 650})
    assert changed.status_code == 200
    third = clone_b.get(f"/products/{product_id}")
    assert third.headers["X-Cache"] == "miss"
    assert third.json is not None
    assert (third.json["stock"], third.json["in_stock"], third.json["price"]) == (0, False, "6.50")
    assert clone_a.get(f"/products/{product_id}").headers["X-Cache"] == "hit"

    replaced = clone_b.put(
        f"/products/{product_id}",
        json={"name": "Renamed", "category": "kitchen", "price_cents": 100},
    )
    assert replaced.status_code == 401  # clone_b is not logged in
    assert clone_a.put(
        f"/products/{product_id}",
        json={"name": "Renamed", "category": "kitchen", "price_cents": 100},
    ).json == {**third.json, "name": "Renamed", "stock": 0, "price_cents": 100, "price": "1.00",
               "description": "", "tags": [], "in_stock": False,
               "category": {"id": "kitchen", "name": "Kitchen",
                            "description": "What it takes to brew them well."}}  # fmt: skip
    assert clone_b.get(f"/products/{product_id}").json["name"] == "Renamed"  # type: ignore[index]


def test_product_errors(make_app: Callable[..., Flask]) -> None:
    client = make_app().test_client()
    assert client.get("/products/no-such-product").status_code == 404
    assert client.get("/products/bad%20id").status_code == 404
    login(client)
    product_id = new_product(client)
    bad_bodies = [
        {"name": "x", "category": "tea"},  # PUT: price_cents missing
        {"name": "x", "category": "tea", "price_cents": -1},
        {"name": "x", "category": "tea", "price_cents": "5"},
        {"name": "x", "category": "tea", "price_cents": 5, "colour": "red"},
        {"name": "x", "category": "nowhere", "price_cents": 5},
    ]
    for body in bad_bodies:
        assert client.put(f"/products/{product_id}", json=body).status_code == 400, body
    assert client.post("/products/t-missing-product", json={"stock": 1}).status_code == 404


def test_product_list(make_app: Callable[..., Flask]) -> None:
    client = make_app().test_client()
    response = client.get("/products?limit=5")
    assert response.status_code == 200
    assert response.json is not None
    page = response.json["products"]
    assert len(page) == 5
    assert response.json["next_after"] == page[-1]["id"]
    following = client.get(f"/products?limit=5&after={page[-1]['id']}").json
    assert following is not None
    assert following["products"][0]["id"] > page[-1]["id"]
    assert client.get("/products?limit=0").status_code == 400


# --- /healthz --------------------------------------------------------------------------------


def test_healthz_ok(make_app: Callable[..., Flask]) -> None:
    response = make_app().test_client().get("/healthz")
    assert response.status_code == 200
    assert response.json is not None
    assert response.json["release"] == "test-release-1"
    assert response.json["checks"] == {"redis": "ok", "docstore": "ok", "broker": "ok"}
    assert response.headers["Cache-Control"] == "no-store"


def test_healthz_503_fast_when_the_docstore_is_down(
    make_app: Callable[..., Flask], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.undo()  # mongomock imitates a server that is always up: use the real client
    client = make_app(docstore_url=dead_url(settings.docstore_engine)).test_client()
    started = time.monotonic()
    response = client.get("/healthz")
    assert time.monotonic() - started < 3
    assert response.status_code == 503
    assert response.json is not None
    checks = response.json["checks"]
    assert checks["redis"] == "ok"
    assert checks["docstore"] != "ok"
    # ...and the product pages say so at once, rather than hang.
    started = time.monotonic()
    assert client.get(f"/products/t-{uuid.uuid4().hex[:12]}").status_code == 503  # not cached
    assert time.monotonic() - started < 3


def test_livez_answers_while_the_shared_services_are_down(
    make_app: Callable[..., Flask], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The balancer's check: a docstore or Redis outage must not take every clone out.
    monkeypatch.undo()
    client = make_app(
        docstore_url=dead_url(settings.docstore_engine),
        redis_url=f"redis://127.0.0.1:{closed_port()}/0",
    ).test_client()
    started = time.monotonic()
    response = client.get("/livez")
    assert time.monotonic() - started < 0.5  # it touches nothing shared
    assert response.status_code == 200
    assert response.json == {"release": "test-release-1", "clone": response.json["clone"]}
    assert response.headers["Cache-Control"] == "no-store"
    assert client.get("/healthz").status_code == 503  # readiness still says what is wrong


def test_healthz_503_when_redis_is_down(make_app: Callable[..., Flask]) -> None:
    app = make_app(redis_url=f"redis://127.0.0.1:{closed_port()}/0")
    client = app.test_client()
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json is not None
    assert response.json["checks"]["redis"].startswith("error")
    # The catalogue does not need Redis: the cache is bypassed.
    product = client.get("/products/1")
    assert (product.status_code, product.headers["X-Cache"]) == (200, "miss")
    # Sessions do.
    assert client.post("/login", json={"user": "ann"}).status_code == 503
    client.set_cookie(COOKIE, "some.cookie")
    assert client.get("/me").status_code == 401  # a forged cookie is refused before Redis


def test_healthz_broker_down_is_reported_but_not_fatal(make_app: Callable[..., Flask]) -> None:
    client = make_app(broker_url=f"amqp://app:x@127.0.0.1:{closed_port()}/app").test_client()
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json is not None
    assert response.json["checks"]["broker"].startswith("error")
    # A report cannot be queued: 503 at once, and the job is marked failed.
    started = time.monotonic()
    queued = client.post("/reports")
    assert queued.status_code == 503
    assert time.monotonic() - started < 5
    assert queued.json is not None
    job = client.get(f"/reports/{queued.json['job_id']}")
    assert (job.status_code, job.json["status"]) == (200, "failed")  # type: ignore[index]


def test_a_redis_that_stops_answering_fails_one_call_in_time_and_the_next_at_once() -> None:
    # A lost host sends no reset: a server that accepts connections and never answers is one.
    # The first call waits out the socket timeout (2 s), the calls in the cooldown fail at once
    # (every worker of a clone would otherwise wait, and the balancer's check with them), and
    # after the cooldown one call tries again.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        client = connect_redis(f"redis://127.0.0.1:{silent.getsockname()[1]}/0")
        started = time.monotonic()
        # The timeout, or the breaker's answer to the client's own retry right after it.
        with pytest.raises(redis.RedisError):
            client.get("k")
        first = time.monotonic() - started
        started = time.monotonic()
        with pytest.raises(RedisCircuitOpen):
            client.get("k")
        with pytest.raises(RedisCircuitOpen):
            client.pipeline(transaction=False).set("k", "v").execute()
        at_once = time.monotonic() - started
        time.sleep(REDIS_COOLDOWN + 0.1)
        started = time.monotonic()
        with pytest.raises(redis.RedisError):
            client.get("k")
        again = time.monotonic() - started
    assert 1.5 < first < 3.5, first
    assert at_once < 0.1, at_once
    assert 1.5 < again < 3.5, again


def test_broker_probe_tries_every_node_of_a_failover_list(redis_url: str) -> None:
    # BROKER_URL of a RabbitMQ cluster lists every node (`url1;url2;...`); the health check is
    # fine while any of them answers, and fails fast when none does. Redis stands in for the
    # broker (kombu's failover is the transport's, not RabbitMQ's).
    first, second = closed_port(), closed_port()
    down = [f"redis://127.0.0.1:{port}/15" for port in (first, second)]
    up = redis_url.rsplit("/", 1)[0] + "/15"
    broker_probe(";".join([*down, up]))
    started = time.monotonic()
    # The error names the last node tried: the second.
    with pytest.raises(OperationalError, match=rf"127\.0\.0\.1:{second}\b"):
        broker_probe(";".join(down))
    assert time.monotonic() - started < 5


# --- reports: the job queue --------------------------------------------------------------------


def test_report_runs_as_a_job(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    app.extensions["shop"].celery.conf.task_always_eager = True  # the task runs in process
    client = app.test_client()
    response = client.post("/reports")
    assert response.status_code == 202
    assert response.json is not None
    job_id = response.json["job_id"]
    assert response.headers["Location"] == f"/reports/{job_id}"

    # Another clone answers the poll: the result is in the document store.
    result = make_app().test_client().get(f"/reports/{job_id}")
    assert result.status_code == 200
    assert result.json is not None
    assert result.json["status"] == "done"
    assert result.json["attempts"] == 1
    report = result.json["result"]
    assert report["products"] >= 12
    assert set(report["by_category"]) >= {"tea", "coffee", "kitchen"}
    assert report["stock_value_cents"] == sum(
        c["stock_value_cents"] for c in report["by_category"].values()
    )


def test_report_enqueue_publishes_one_message(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    celery = app.extensions["shop"].celery
    with celery.connection_for_read() as conn:
        queue = conn.SimpleQueue(job_queue())
        queue.clear()
        response = app.test_client().post("/reports")
        assert response.status_code == 202
        assert response.json is not None
        job_id = response.json["job_id"]
        message = queue.get(timeout=2)
        queue.close()
    assert message.headers["task"] == "shop.generate_report"
    assert message.headers["id"] == job_id
    assert message.properties.get("delivery_mode") == 2  # persistent: survives a broker restart
    args, _kwargs, _embed = message.decode()
    assert args == [job_id, 0.0]

    pending = app.test_client().get(f"/reports/{job_id}")
    assert pending.status_code == 202
    assert pending.json is not None
    assert pending.json["status"] == "pending"


def test_report_unknown_job(make_app: Callable[..., Flask]) -> None:
    client = make_app().test_client()
    assert client.get(f"/reports/{uuid.uuid4()}").status_code == 404
    assert client.get("/reports/not-a-job-id").status_code == 404


# --- pages -------------------------------------------------------------------------------------


def test_pages_are_the_baked_ones(make_app: Callable[..., Flask]) -> None:
    client = make_app().test_client()
    for path in ("/", "/catalogue/"):
        response = client.get(path)
        assert response.status_code == 200
        assert response.mimetype == "text/html"
        assert "test-release-1" in response.text
        assert "Vary" not in response.headers  # cacheable by the balancer as is
        assert "public" in response.headers["Cache-Control"]
