"""The part each host plays in its tier, and the tier's state in a few words (deploykit status).

The module deploykit.fleet.tier_state asks each shared-service host (read-only):

- **cache** (Redis with Sentinel): ROLE: ``master`` with its replicas and how far behind each is
  (bytes of replication stream), or ``slave`` of which primary, and whether its link is up;
- **queue** (a RabbitMQ cluster): the cluster's nodes and those running, as this node sees them;
- **docstore** (PostgreSQL with a standby): ``primary`` with its standbys' state and lag (bytes of
  WAL not yet replayed), or ``standby`` streaming from which host, seconds since its last replay.

``summarize`` turns the hosts' answers into one line per tier, and says what is wrong (no primary,
two primaries, a node not running, a standby not streaming). Standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TierLine:
    tier: str
    text: str
    healthy: bool


def redis_role(reply: Sequence[Any]) -> dict[str, Any]:
    """ROLE's reply, as data: {"role": "primary", "replicas": [{"address", "lag"}]} or
    {"role": "replica", "primary": "host:port", "link": "connected"|...}."""
    kind = str(reply[0])
    if kind == "master":
        offset = int(reply[1])
        replicas = [
            {"address": f"{entry[0]}:{entry[1]}", "lag": max(0, offset - int(entry[2]))}
            for entry in reply[2]
        ]
        return {"role": "primary", "replicas": replicas}
    if kind == "slave":
        return {"role": "replica", "primary": f"{reply[1]}:{reply[2]}", "link": str(reply[3])}
    return {"role": kind}


def _named(address: str, names: Mapping[str, str]) -> str:
    host = address.rsplit(":", 1)[0].removeprefix("rabbit@")
    return names.get(host, address)


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if count < 1024:
            return f"{count} {unit}"
        count //= 1024
    return f"{count} GiB"


def summarize(answers: Mapping[str, Mapping[str, Any]], names: Mapping[str, str]) -> list[TierLine]:
    """One line per tier that reported: ``answers`` is {host: the module's report}, ``names``
    {private address: inventory name} (the services speak of addresses)."""
    lines: list[TierLine] = []
    redis = {host: a["redis"] for host, a in answers.items() if a.get("redis")}
    if redis:
        lines.append(_redis_line(redis, names))
    rabbit = {host: a["rabbitmq"] for host, a in answers.items() if a.get("rabbitmq")}
    if rabbit:
        lines.append(_rabbitmq_line(rabbit, names))
    postgres = {host: a["postgresql"] for host, a in answers.items() if a.get("postgresql")}
    if postgres:
        lines.append(_postgresql_line(postgres, names))
    return lines


def _redis_line(redis: Mapping[str, Mapping[str, Any]], names: Mapping[str, str]) -> TierLine:
    primaries = [host for host, state in redis.items() if state.get("role") == "primary"]
    errors = [f"{host}: {state['error']}" for host, state in redis.items() if "error" in state]
    parts = []
    for host in primaries:
        replicas = ", ".join(
            f"{_named(r['address'], names)} {_size(int(r['lag']))} behind"
            for r in redis[host].get("replicas", [])
        )
        parts.append(f"primary {host}" + (f"; replicas {replicas}" if replicas else ""))
    broken = [
        f"{host} replica of {_named(state['primary'], names)}, link {state['link']}"
        for host, state in redis.items()
        if state.get("role") == "replica" and state.get("link") != "connected"
    ]
    healthy = len(primaries) == 1 and not broken and not errors
    if not primaries:
        parts.append("no primary")
    elif len(primaries) > 1:
        parts.append("SEVERAL PRIMARIES")
    return TierLine("cache", "Redis: " + "; ".join(parts + broken + errors), healthy)


def _rabbitmq_line(rabbit: Mapping[str, Mapping[str, Any]], names: Mapping[str, str]) -> TierLine:
    errors = [f"{host}: {state['error']}" for host, state in rabbit.items() if "error" in state]
    views = [state for state in rabbit.values() if "error" not in state]
    members = sorted({node for view in views for node in view.get("nodes", [])})
    running = sorted({node for view in views for node in view.get("running", [])})
    down = [node for node in members if node not in running]
    text = f"RabbitMQ: {len(running)}/{len(members)} cluster nodes running"
    if down:
        text += " (not running: " + ", ".join(_named(node, names) for node in down) + ")"
    healthy = bool(members) and not down and not errors and len(rabbit) == len(members)
    return TierLine("queue", "; ".join([text, *errors]), healthy)


def _postgresql_line(
    postgres: Mapping[str, Mapping[str, Any]], names: Mapping[str, str]
) -> TierLine:
    primaries = [host for host, state in postgres.items() if state.get("role") == "primary"]
    errors = [f"{host}: {state['error']}" for host, state in postgres.items() if "error" in state]
    parts = [f"primary {host}" for host in primaries]
    healthy = len(primaries) == 1 and not errors
    for host, state in postgres.items():
        if state.get("role") != "standby":
            continue
        source = _named(str(state.get("source") or "?"), names)
        lag = state.get("replay_seconds")
        behind = f", last replay {lag:.0f} s ago" if isinstance(lag, int | float) else ""
        if state.get("streaming"):
            parts.append(f"standby {host} streaming from {source}{behind}")
        else:
            parts.append(f"standby {host} NOT streaming{behind}")
            healthy = False
    for host in primaries:
        for standby in postgres[host].get("standbys", []):
            lag_bytes = int(standby.get("lag") or 0)
            parts.append(f"{_named(str(standby['address']), names)} {_size(lag_bytes)} behind")
    if not primaries:
        parts.append("no primary")
    elif len(primaries) > 1:
        parts.append("SEVERAL PRIMARIES")
    return TierLine("docstore", "PostgreSQL: " + "; ".join(parts + errors), healthy)
