"""The web application (`shop.web:app`, served by gunicorn on every clone).

Every clone is the same code with the same configuration (the environment) and keeps no user
state of its own: sessions are in Redis, documents in the document store, slow work goes to the
queue. Any clone can therefore answer any request, and a clone can be restarted, replaced or
lost without a user noticing.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import kombu.exceptions
import redis
from celery import Celery
from flask import Flask, Response, current_app, jsonify, request, session
from kombu.connection import Connection
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection
from werkzeug.exceptions import HTTPException, InternalServerError

from shop import catalogue
from shop.bake import render_pages
from shop.cache import ObjectCache
from shop.catalogue import CATEGORIES, JOBS, PRODUCT_ID, PRODUCTS, ProductError
from shop.docstore import DocstoreUnavailable, DocumentStore, InvalidDocument, open_store
from shop.health import Check, HealthChecker
from shop.jobs import QueueUnavailable, enqueue_report, make_celery
from shop.sessions import RedisSession, RedisSessionInterface
from shop.settings import ConfigError, Settings

log = logging.getLogger(__name__)

USER_NAME = re.compile(r"^[\w.@+-]{1,64}$")
JOB_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
#: Broker checks open a real AMQP connection: done less often than the others (not critical).
BROKER_CHECK_TTL = 10.0


class SessionsUnavailable(RuntimeError):
    """The session store (Redis) could not be read for this request."""


UNAVAILABLE: tuple[type[Exception], ...] = (
    DocstoreUnavailable,
    SessionsUnavailable,
    redis.RedisError,
    QueueUnavailable,
    kombu.exceptions.OperationalError,
)


@dataclass(frozen=True)
class Shop:
    """What a clone talks to; one per application object, shared by its threads."""

    settings: Settings
    redis: redis.Redis
    store: DocumentStore
    cache: ObjectCache
    celery: Celery
    health: HealthChecker


def clone_name() -> str:
    return socket.gethostname()


class RedisCircuitOpen(redis.ConnectionError):
    """Redis failed moments ago: this call fails at once instead of waiting out a timeout."""


class RedisBreaker:
    """Fail at once for ``cooldown`` seconds after Redis did not answer.

    A Redis host that is lost (a power cut, a failover's old primary) sends no reset: every call
    would wait out its timeout, and with every worker of a clone waiting, the clone stops
    answering even the balancer's health check. After one such failure, calls fail at once (the
    app's own 503) until the cooldown has passed; then one call tries again, through the
    Sentinels when there are some (so a new primary is found as soon as they name it)."""

    def __init__(self, cooldown: float) -> None:
        self.cooldown = cooldown
        self.open_until = 0.0

    def check(self) -> None:
        left = self.open_until - time.monotonic()
        if left > 0:
            raise RedisCircuitOpen(
                f"Redis did not answer just now; failing at once for {left:.1f} s"
            )

    def watch(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except RedisCircuitOpen:
            raise
        except (redis.ConnectionError, redis.TimeoutError):
            self.open_until = time.monotonic() + self.cooldown
            raise


def fail_fast(base: type[redis.Connection], breaker: RedisBreaker) -> type[redis.Connection]:
    """A redis-py connection class whose every network step goes through ``breaker``."""

    class FailFastConnection(base):  # type: ignore[valid-type,misc]
        def connect(self) -> None:
            breaker.check()
            breaker.watch(super().connect)

        def send_packed_command(self, *args: Any, **kwargs: Any) -> None:
            breaker.check()
            breaker.watch(super().send_packed_command, *args, **kwargs)

        def read_response(self, *args: Any, **kwargs: Any) -> Any:
            return breaker.watch(super().read_response, *args, **kwargs)

    return FailFastConnection


#: Seconds calls fail at once after Redis did not answer (RedisBreaker).
REDIS_COOLDOWN = 1.0


def connect_redis(
    url: str, sentinels: Sequence[tuple[str, int]] = (), master_name: str = ""
) -> redis.Redis:
    """A Redis client with short timeouts, a single immediate retry (a stale pooled connection
    after a Redis restart) and a breaker (RedisBreaker), so that a dead Redis fails a request in
    about a second and the requests after it at once, never hangs them.

    With Sentinels, the client asks them for the primary on each new connection (REDIS_URL gives
    the user, password and database): after a failover, the first request on a connection to the
    old primary fails (the app's own 503) and the next one goes to the new primary."""
    breaker = RedisBreaker(REDIS_COOLDOWN)
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": 1,
        "socket_timeout": 2,
        "retry": Retry(NoBackoff(), 1),
        "health_check_interval": 30,
    }
    if not sentinels:
        return redis.Redis.from_url(
            url, connection_class=fail_fast(redis.Connection, breaker), **options
        )
    parts = urlsplit(url)
    credentials = {
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
    }
    # A Sentinel that does not answer is passed over at once for the next (no retry: redis-py's
    # default retries with a backoff of seconds, and a lost host's Sentinel held every request
    # after a failover for 3 s and more).
    sentinel = Sentinel(
        list(sentinels),
        sentinel_kwargs={
            **credentials,
            "socket_connect_timeout": 0.5,
            "socket_timeout": 0.5,
            "retry": Retry(NoBackoff(), 0),
        },
        **credentials,
    )
    database = int(parts.path.strip("/") or 0)
    return sentinel.master_for(
        master_name,
        db=database,
        connection_class=fail_fast(SentinelManagedConnection, breaker),
        **options,
    )


def broker_probe(url: str) -> None:
    """Connect to the broker: with a failover list (``url1;url2;...``), the first that answers."""
    with Connection(url, connect_timeout=1) as conn:  # type: ignore[no-untyped-call]
        # One attempt per node, no pause between them (kombu sleeps only after a whole round).
        conn.ensure_connection(max_retries=max(len(conn.alt), 1) - 1, interval_start=0)


def create_app(settings: Settings | None = None) -> Flask:
    """A clone. Reads the environment unless given `settings`; connects to nothing until used."""
    settings = Settings.from_env() if settings is None else settings
    settings.check_engine()
    if not settings.secret_key:
        raise ConfigError("SECRET_KEY is empty: sessions cannot be signed")

    app = Flask("shop")
    app.config.update(
        SECRET_KEY=settings.secret_key,
        SESSION_COOKIE_NAME="shop_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        MAX_CONTENT_LENGTH=1 << 20,
        PROPAGATE_EXCEPTIONS=False,
    )
    client = connect_redis(settings.redis_url, settings.redis_sentinels, settings.redis_master_name)
    store = open_store(settings.docstore_engine, settings.docstore_url)
    health = HealthChecker(
        [
            Check("redis", client.ping),
            Check("docstore", store.ping),
            Check(
                "broker",
                functools.partial(broker_probe, settings.broker_url),
                critical=False,
                ttl=BROKER_CHECK_TTL,
            ),
        ]
    )
    app.extensions["shop"] = Shop(
        settings=settings,
        redis=client,
        store=store,
        cache=ObjectCache(client),
        celery=make_celery(settings, store),
        health=health,
    )
    app.session_interface = RedisSessionInterface(client)
    _register_errors(app)
    _register_routes(app)
    return app


def shop() -> Shop:
    component: Shop = current_app.extensions["shop"]
    return component


def _json(payload: Any, status: int = 200, **headers: str) -> Response:
    response = jsonify(payload)
    response.status_code = status
    response.headers.update(headers)
    return response


def _unavailable(exc: BaseException) -> Response:
    log.warning("503: %s: %s", type(exc).__name__, exc)
    detail = " ".join(str(exc).split())[:300] or type(exc).__name__
    return _json(
        {"error": "service unavailable", "detail": detail, "clone": clone_name()},
        503,
        **{"Retry-After": "1"},
    )


def _register_errors(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        if isinstance(exc, InternalServerError) and isinstance(exc.original_exception, UNAVAILABLE):
            # Raised outside a view (e.g. while saving the session): still a 503, not a 500.
            return _unavailable(exc.original_exception)
        status = exc.code or 500
        return _json({"error": exc.name, "detail": exc.description}, status)

    for kind in UNAVAILABLE:
        app.register_error_handler(kind, _unavailable)

    @app.errorhandler(InvalidDocument)
    def invalid(exc: InvalidDocument) -> Response:
        return _json({"error": str(exc)}, 400)


def _user() -> str | None:
    current = session
    if isinstance(current, RedisSession) and current.unavailable:
        raise SessionsUnavailable(current.unavailable)
    user = current.get("user")
    return user if isinstance(user, str) else None


def _product_response(product: dict[str, Any], status: int, cache_status: str) -> Response:
    return _json(product, status, **{"X-Cache": cache_status})


@functools.cache
def _pages(release: str | None) -> dict[str, str]:
    return render_pages(release)


def _register_routes(app: Flask) -> None:  # noqa: PLR0915 - one place lists every route
    host = clone_name()

    @app.after_request
    def served_by(response: Response) -> Response:
        response.headers["X-Served-By"] = host
        return response

    # -- health -----------------------------------------------------------------------------

    @app.get("/healthz")
    def healthz() -> Response:
        healthy, checks = shop().health.report()
        return _json(
            {"release": shop().settings.release_id, "checks": checks, "clone": host},
            200 if healthy else 503,
            **{"Cache-Control": "no-store"},
        )

    @app.get("/livez")
    def livez() -> Response:
        # The balancer's check: this process serves. It checks no shared service on purpose: when
        # Redis or the docstore is down every clone fails alike, and taking them all out would
        # turn the app's clear JSON error (and everything that still works) into HAProxy's 503.
        # Readiness (a release that can reach what it needs) is /healthz, which gates a deploy.
        return _json(
            {"release": shop().settings.release_id, "clone": host},
            200,
            **{"Cache-Control": "no-store"},
        )

    # -- pages rendered ahead of time (the same bytes the bakery bakes at build time) ---------

    @app.get("/")
    def index() -> Response:
        return _page("index.html")

    @app.get("/catalogue/")
    def catalogue_page() -> Response:
        return _page("catalogue/index.html")

    def _page(path: str) -> Response:
        response = Response(_pages(shop().settings.release_id)[path], mimetype="text/html")
        response.headers["Cache-Control"] = "public, max-age=300"
        return response

    # -- sessions -----------------------------------------------------------------------------

    @app.post("/login")
    def login() -> Response:
        if request.is_json:
            data = request.get_json(silent=True)
            name = data.get("user") if isinstance(data, dict) else None
        else:
            name = request.form.get("user")
        if not isinstance(name, str) or not USER_NAME.match(name):
            return _json({"error": "send a user name: 1 to 64 letters, digits or ._@+-"}, 400)
        _user()  # 503 now if the session store cannot be read
        assert isinstance(session, RedisSession)
        session.clear()
        session.regenerate()
        session["user"] = name
        session["login_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        session["login_clone"] = host
        return _json({"user": name, "clone": host})

    @app.post("/logout")
    def logout() -> Response:
        user = _user()
        session.clear()
        return _json({"user": None, "was": user, "clone": host})

    @app.get("/me")
    def me() -> Response:
        user = _user()
        body = {
            "user": user,
            "clone": host,
            "pid": os.getpid(),
            "release": shop().settings.release_id,
            "login_at": session.get("login_at") if user else None,
            "login_clone": session.get("login_clone") if user else None,
        }
        return _json(body, 200 if user else 401)

    # -- products: documents by key, whole objects cached -------------------------------------

    @app.get("/products")
    def list_products() -> Response:
        limit = request.args.get("limit", "50")
        after = request.args.get("after") or None
        if not limit.isdigit() or not 1 <= int(limit) <= 200:
            return _json({"error": "limit must be from 1 to 200"}, 400)
        found = shop().store.find(PRODUCTS, limit=int(limit), after=after)
        items = [
            {
                "id": key,
                "name": doc.get("name"),
                "price": catalogue.price_text(int(doc.get("price_cents", 0))),
                "category": doc.get("category"),
            }
            for key, doc in found
        ]
        next_after = found[-1][0] if len(found) == int(limit) else None
        return _json({"products": items, "next_after": next_after})

    @app.get("/products/<product_id>")
    def get_product(product_id: str) -> Response:
        if not PRODUCT_ID.match(product_id):
            return _json({"error": "no such product"}, 404)
        component = shop()
        product, status = component.cache.get_or_build(
            "product", product_id, lambda: catalogue.load_product(component.store, product_id)
        )
        if product is None:
            return _json({"error": "no such product"}, 404, **{"X-Cache": status})
        return _product_response(product, 200, status)

    @app.route("/products/<product_id>", methods=["PUT", "POST"])
    def write_product(product_id: str) -> Response:
        # PUT replaces (or creates) the whole product; POST changes the fields it is given.
        if not PRODUCT_ID.match(product_id):
            return _json({"error": "a product id is 1 to 64 letters, digits, - or _"}, 400)
        user = _user()
        if user is None:
            return _json({"error": "log in first (POST /login)"}, 401)
        component = shop()
        try:
            changes = catalogue.check_product(
                request.get_json(silent=True), partial=request.method == "POST"
            )
        except ProductError as exc:
            return _json({"error": str(exc)}, 400)
        existing = component.store.get(PRODUCTS, product_id)
        if request.method == "POST":
            if existing is None:
                return _json({"error": "no such product (PUT creates one)"}, 404)
            doc = {**existing, **changes}
        else:
            doc = changes
        category_id = doc.get("category")
        category = None
        if isinstance(category_id, str) and PRODUCT_ID.match(category_id):
            category = component.store.get(CATEGORIES, category_id)
        if category is None:
            return _json({"error": f"no such category: {category_id}"}, 400)

        # Invalidate, write, invalidate again: the first fails the write if Redis is down (a
        # stale cached copy would outlive it), the second drops a copy that a concurrent reader
        # may have stored from the old document meanwhile.
        component.cache.invalidate("product", product_id)
        component.store.put(PRODUCTS, product_id, doc)
        try:
            component.cache.invalidate("product", product_id)
        except redis.RedisError as exc:
            log.warning("product %s: second invalidation failed: %s", product_id, exc)
        product = catalogue.assemble_product(product_id, doc, category)
        return _product_response(product, 201 if existing is None else 200, "miss")

    # -- reports: slow work through the queue ----------------------------------------------

    @app.post("/reports")
    def create_report() -> Response:
        component = shop()
        job_id = str(uuid.uuid4())
        job = {
            "status": "pending",
            "kind": "catalogue",
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "requested_by": session.get("user") if not _session_unavailable() else None,
            "clone": host,
        }
        component.store.insert(JOBS, job_id, job)
        try:
            enqueue_report(component.celery, job_id, component.settings.report_seconds)
        except QueueUnavailable as exc:
            log.warning("report %s: not queued: %s", job_id, exc)
            component.store.put(JOBS, job_id, {**job, "status": "failed", "error": str(exc)})
            body = {"job_id": job_id, "status": "failed", "error": "the job queue is unavailable"}
            return _json(body, 503, **{"Retry-After": "5"})
        url = f"/reports/{job_id}"
        return _json({"job_id": job_id, "status": "pending", "url": url}, 202, **{"Location": url})

    @app.get("/reports/<job_id>")
    def get_report(job_id: str) -> Response:
        if not JOB_ID.match(job_id):
            return _json({"error": "no such job"}, 404)
        job = shop().store.get(JOBS, job_id)
        if job is None:
            return _json({"error": "no such job"}, 404)
        status = str(job.get("status", "pending"))
        return _json({"job_id": job_id, **job}, 202 if status in ("pending", "running") else 200)


def _session_unavailable() -> bool:
    return isinstance(session, RedisSession) and session.unavailable is not None


_lazy: dict[str, Flask] = {}
_lazy_lock = threading.Lock()


def __getattr__(name: str) -> Any:
    # `app` is made on first access, from the environment (gunicorn's `shop.web:app`), so that
    # importing this module needs no configuration and opens no connection.
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _lazy_lock:
        if name not in _lazy:
            _lazy[name] = create_app()
        return _lazy[name]
