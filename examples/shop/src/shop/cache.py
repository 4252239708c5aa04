"""Whole objects cached in Redis, cache-aside.

What is cached is the finished object a page needs (an assembled product document, joined in
application code from several stored documents), not the result of some query. Reads try the
cache, and on a miss build the object from the document store and store it with a TTL. Writes go
to the document store and then delete the cached object, so the next read rebuilds it.

Every cache key has a TTL. That is what makes the cache evictable under deploykit's Redis
``volatile-*`` maxmemory policy (sessions, which have none, are never evicted), and it bounds how
long any stale copy can live: a reader that loaded the old object just before a write and stored
it just after the invalidation leaves it there for at most the TTL. Invalidation happens both
before and after the write, which makes that window as short as the write itself.

The cache is an optimisation: if Redis cannot be read, reads fall through to the document store.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, Literal

import redis

log = logging.getLogger(__name__)

CacheStatus = Literal["hit", "miss"]
DEFAULT_TTL = 300


class ObjectCache:
    def __init__(
        self, client: redis.Redis, *, prefix: str = "cache:", ttl: int = DEFAULT_TTL
    ) -> None:
        if ttl <= 0:
            raise ValueError("cache keys always have a TTL")
        self.client = client
        self.prefix = prefix
        self.ttl = ttl

    def key(self, kind: str, ident: str) -> str:
        return f"{self.prefix}{kind}:{ident}"

    def get_or_build(
        self, kind: str, ident: str, build: Callable[[], Any | None]
    ) -> tuple[Any | None, CacheStatus]:
        """The cached object, or `build()`'s (cached unless None), and whether it was a hit."""
        key = self.key(kind, ident)
        try:
            raw = self.client.get(key)
        except redis.RedisError as exc:
            log.warning("cache: read of %s failed, building instead: %s", key, exc)
            return build(), "miss"
        if raw is not None:
            return json.loads(raw), "hit"
        value = build()
        if value is not None:
            try:
                self.client.set(key, json.dumps(value, separators=(",", ":")), ex=self.ttl)
            except redis.RedisError as exc:
                log.warning("cache: write of %s failed: %s", key, exc)
        return value, "miss"

    def invalidate(self, kind: str, ident: str) -> None:
        """Forget the cached object. Raises redis.RedisError: a write must not leave it stale."""
        self.client.delete(self.key(kind, ident))
