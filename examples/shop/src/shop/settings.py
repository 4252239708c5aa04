"""Configuration, from the environment only.

deploykit writes these variables into /srv/shop/shared/env on every node (the same file on every
clone); the app reads nothing else and writes nothing to local disk. A missing variable is an error
at start-up, named in the message, rather than a silent fallback to some default that would make
one clone differ from the others.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

#: The variables the application reads (the same list as `[tool.deploykit] settings`).
SETTINGS = ("SECRET_KEY", "REDIS_URL", "BROKER_URL", "DOCSTORE_ENGINE", "DOCSTORE_URL")
#: Read when set, empty otherwise: Redis's Sentinels ("host:port,host:port,...") and the name
#: they watch the primary under. With them, the primary's address comes from the Sentinels (it
#: moves at a failover) and REDIS_URL gives the user, the password and the database only.
OPTIONAL_SETTINGS = ("REDIS_SENTINELS", "REDIS_MASTER_NAME")
#: Always provided by deploykit: the id of the release this process runs.
RELEASE_VARIABLE = "DEPLOYKIT_RELEASE_ID"
ENGINES = ("postgresql", "mongodb")


class ConfigError(RuntimeError):
    """The environment does not describe a usable configuration."""


@dataclass(frozen=True)
class Settings:
    secret_key: str = ""
    redis_url: str = ""
    #: (host, port) of each Sentinel; empty: Redis is at REDIS_URL.
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    redis_master_name: str = ""
    broker_url: str = ""
    docstore_engine: str = ""
    docstore_url: str = ""
    release_id: str | None = None
    #: How long a report job works before it computes its result (the "slow" part of the job).
    report_seconds: float = 3.0

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        required: Iterable[str] = SETTINGS,
    ) -> Settings:
        """Read the settings; every variable in `required` must be set and non-empty."""
        env = os.environ if environ is None else environ
        required = tuple(required)
        unknown = [name for name in required if name not in SETTINGS]
        if unknown:
            raise ValueError(f"not a shop setting: {', '.join(unknown)}")
        missing = [name for name in required if not env.get(name, "").strip()]
        if missing:
            raise ConfigError(
                "missing environment variable(s): "
                + ", ".join(missing)
                + " (deploykit provides them in /srv/shop/shared/env)"
            )
        settings = cls(
            secret_key=env.get("SECRET_KEY", "").strip(),
            redis_url=env.get("REDIS_URL", "").strip(),
            redis_sentinels=parse_sentinels(env.get("REDIS_SENTINELS", "")),
            redis_master_name=env.get("REDIS_MASTER_NAME", "").strip(),
            broker_url=env.get("BROKER_URL", "").strip(),
            docstore_engine=env.get("DOCSTORE_ENGINE", "").strip(),
            docstore_url=env.get("DOCSTORE_URL", "").strip(),
            release_id=env.get(RELEASE_VARIABLE) or None,
        )
        if "DOCSTORE_ENGINE" in required:
            settings.check_engine()
        if settings.redis_sentinels and not settings.redis_master_name:
            raise ConfigError("REDIS_SENTINELS is set but REDIS_MASTER_NAME is empty")
        return settings

    def check_engine(self) -> None:
        if self.docstore_engine not in ENGINES:
            raise ConfigError(
                f"DOCSTORE_ENGINE must be one of {', '.join(ENGINES)}, not {self.docstore_engine!r}"
            )


def parse_sentinels(text: str) -> tuple[tuple[str, int], ...]:
    """ "10.0.0.1:26379,10.0.0.2:26379" as ((host, port), ...); "" as ()."""
    sentinels = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"REDIS_SENTINELS: {item!r} is not host:port")
        sentinels.append((host.strip("[]"), int(port)))
    return tuple(sentinels)
