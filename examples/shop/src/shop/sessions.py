"""Server-side sessions in Redis, so that any clone can serve any user.

The browser holds only a signed cookie with a random session id; the data lives in Redis under
``session:<id>``. A user logged in through one clone is logged in on every other clone, and stays
logged in across restarts and deploys (Redis keeps sessions on disk: AOF).

Eviction: the Redis of deploykit's stack runs a ``volatile-*`` maxmemory policy, which evicts only
keys that have a TTL. Session keys therefore never get one (a TTL would make a live session
evictable under memory pressure); instead each record carries its own expiry time, which the app
checks on every read, and the sorted set ``session-expiry`` (member: id, score: expiry) lets the
app delete expired records in small batches. Cache keys, by contrast, always have a TTL.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from flask import Flask, Request, Response
from flask.sessions import SecureCookieSession, SessionInterface, SessionMixin
from itsdangerous import BadSignature, Signer

log = logging.getLogger(__name__)

KEY_PREFIX = "session:"
EXPIRY_INDEX = "session-expiry"
SWEEP_BATCH = 100
DEFAULT_LIFETIME = timedelta(days=7)


def session_key(sid: str) -> str:
    return KEY_PREFIX + sid


class RedisSession(SecureCookieSession):
    """The session dict, plus its id, its expiry, and whether Redis could be read at all."""

    def __init__(
        self,
        initial: dict[str, Any] | None = None,
        *,
        sid: str | None = None,
        expires: float = 0.0,
        unavailable: str | None = None,
    ) -> None:
        super().__init__(initial)
        self.sid = sid
        self.expires = expires
        #: Why the session could not be loaded (Redis down), or None. Views that need the session
        #: answer 503 then; views that do not, such as the catalogue, keep working.
        self.unavailable = unavailable
        self.rotate = False

    def regenerate(self) -> None:
        """Give the session a new id at the next save (on login: no session fixation)."""
        self.rotate = True
        self.modified = True


class RedisSessionInterface(SessionInterface):
    salt = "shop.session"

    def __init__(self, client: redis.Redis, lifetime: timedelta = DEFAULT_LIFETIME) -> None:
        self.client = client
        self.lifetime = lifetime

    # -- helpers ----------------------------------------------------------------------------

    def _signer(self, app: Flask) -> Signer:
        if not app.secret_key:
            raise RuntimeError("SECRET_KEY is not set: sessions cannot be signed")
        keys = [*(app.config.get("SECRET_KEY_FALLBACKS") or []), app.secret_key]
        return Signer(keys, salt=self.salt)

    def _refresh_due(self, session: RedisSession) -> bool:
        # Sliding expiry, written at most once per half lifetime rather than on every request.
        remaining = session.expires - time.time()
        return remaining < self.lifetime.total_seconds() / 2

    def sweep(self, now: float | None = None, batch: int = SWEEP_BATCH) -> int:
        """Delete up to `batch` expired session records; how many were deleted."""
        now = time.time() if now is None else now
        found = self.client.zrangebyscore(EXPIRY_INDEX, "-inf", now, start=0, num=batch)
        sids = [str(sid) for sid in found]
        if not sids:
            return 0
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(*[session_key(sid) for sid in sids])
        pipe.zrem(EXPIRY_INDEX, *sids)
        pipe.execute()
        return len(sids)

    # -- SessionInterface ------------------------------------------------------------------

    def open_session(self, app: Flask, request: Request) -> RedisSession:
        cookie = request.cookies.get(self.get_cookie_name(app))
        if not cookie:
            return RedisSession()  # no Redis round trip for cookie-less requests (health checks)
        try:
            sid = self._signer(app).unsign(cookie).decode("ascii")
        except (BadSignature, UnicodeDecodeError):
            return RedisSession()
        try:
            raw = self.client.get(session_key(sid))
            if raw is None:
                return RedisSession()
            record = json.loads(raw)
            if record.get("expires", 0) <= time.time():
                self.client.delete(session_key(sid))
                self.client.zrem(EXPIRY_INDEX, sid)
                return RedisSession()
        except redis.RedisError as exc:
            log.warning("sessions: Redis unavailable: %s", exc)
            return RedisSession(unavailable=f"redis: {exc}")
        return RedisSession(record.get("data", {}), sid=sid, expires=float(record["expires"]))

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        if not isinstance(session, RedisSession) or session.unavailable:
            return
        name = self.get_cookie_name(app)
        cookie_options: dict[str, Any] = {
            "domain": self.get_cookie_domain(app),
            "path": self.get_cookie_path(app),
            "secure": self.get_cookie_secure(app),
            "samesite": self.get_cookie_samesite(app),
            "httponly": self.get_cookie_httponly(app),
        }
        if session.sid is not None:
            response.vary.add("Cookie")

        if not session:  # empty: nothing to keep (and a cleared session is forgotten)
            if session.sid is not None and session.modified:
                pipe = self.client.pipeline(transaction=False)
                pipe.delete(session_key(session.sid))
                pipe.zrem(EXPIRY_INDEX, session.sid)
                pipe.execute()
                response.delete_cookie(name, **cookie_options)
            return
        if not (session.modified or session.sid is None or self._refresh_due(session)):
            return

        sid = session.sid
        new = sid is None or session.rotate
        expires = time.time() + self.lifetime.total_seconds()
        record = json.dumps({"data": dict(session), "expires": expires}, separators=(",", ":"))
        # One round trip, but no MULTI/EXEC: Redis 7.0 replays a transaction from its AOF as the
        # `default` user and re-checks its ACL at EXEC, so where that user is denied commands
        # (deploykit's redis role used to; it now keeps it off but permitted) every transaction
        # was refused at restart and its session lost (redis/redis#14541, fixed upstream by
        # #14545). The shop must not depend on how its Redis is set up. Without a transaction,
        # the order keeps every partial outcome harmless: the expiry entry first (a sweep drops
        # an entry whose record never came), then the record, and the old id last (it never
        # holds the new session's data, so it cannot be fixed on a victim).
        old = sid if new else None
        if new:
            sid = secrets.token_urlsafe(32)
        assert sid is not None
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(EXPIRY_INDEX, {sid: expires})
        # SET without EX/KEEPTTL: the key has no TTL, so volatile-* eviction never drops it.
        pipe.set(session_key(sid), record)
        if old is not None:  # rotating: the old id stops working at once
            pipe.delete(session_key(old))
            pipe.zrem(EXPIRY_INDEX, old)
        pipe.execute()
        session.sid, session.expires, session.rotate = sid, expires, False
        if new:
            self.sweep()

        response.set_cookie(
            name,
            self._signer(app).sign(sid).decode("ascii"),
            expires=datetime.fromtimestamp(expires, UTC),
            **cookie_options,
        )
        response.vary.add("Cookie")
