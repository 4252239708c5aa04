"""Each shared-service tier's state in one line (module_utils/tiers.py), as deploykit status
prints it: who is primary, who follows, what is wrong. The module that asks the hosts runs on
the ha lab (tests/e2e/test_ha.py)."""

from __future__ import annotations

from ansible_collections.deploykit.fleet.plugins.module_utils.tiers import (
    TierLine,
    redis_role,
    summarize,
)

NAMES = {
    f"10.0.0.{i}": name for i, name in enumerate(["c1", "c2", "c3", "q1", "q2", "d1", "d2"], 1)
}


def test_redis_role_replies_are_read() -> None:
    primary = redis_role(
        ["master", 1000, [["10.0.0.2", "6379", "1000"], ["10.0.0.3", "6379", "400"]]]
    )
    assert primary == {
        "role": "primary",
        "replicas": [
            {"address": "10.0.0.2:6379", "lag": 0},
            {"address": "10.0.0.3:6379", "lag": 600},
        ],
    }
    replica = redis_role(["slave", "10.0.0.1", 6379, "connected", 1000])
    assert replica == {"role": "replica", "primary": "10.0.0.1:6379", "link": "connected"}


def test_a_healthy_redis_tier_names_its_primary_and_each_replicas_lag() -> None:
    answers = {
        "c1": {
            "redis": {"role": "primary", "replicas": [{"address": "10.0.0.2:6379", "lag": 2048}]}
        },
        "c2": {"redis": {"role": "replica", "primary": "10.0.0.1:6379", "link": "connected"}},
    }
    assert summarize(answers, NAMES) == [
        TierLine("cache", "Redis: primary c1; replicas c2 2 KiB behind", True)
    ]


def test_two_redis_primaries_or_none_are_unhealthy() -> None:
    two = {h: {"redis": {"role": "primary", "replicas": []}} for h in ("c1", "c2")}
    (line,) = summarize(two, NAMES)
    assert not line.healthy and "SEVERAL PRIMARIES" in line.text
    none = {"c2": {"redis": {"role": "replica", "primary": "10.0.0.1:6379", "link": "connect"}}}
    (line,) = summarize(none, NAMES)
    assert not line.healthy
    assert "no primary" in line.text and "c2 replica of c1, link connect" in line.text


def test_a_rabbitmq_node_not_running_is_named() -> None:
    nodes = ["rabbit@10.0.0.4", "rabbit@10.0.0.5"]
    answers = {
        "q1": {"rabbitmq": {"nodes": nodes, "running": nodes[:1]}},
        "q2": {"rabbitmq": {"error": "down"}},
    }
    (line,) = summarize(answers, NAMES)
    assert line == TierLine(
        "queue", "RabbitMQ: 1/2 cluster nodes running (not running: q2); q2: down", False
    )
    healthy = {h: {"rabbitmq": {"nodes": nodes, "running": nodes}} for h in ("q1", "q2")}
    assert summarize(healthy, NAMES)[0].healthy


def test_a_postgresql_standby_streams_or_is_flagged() -> None:
    answers = {
        "d1": {"postgresql": {"role": "primary", "standbys": [{"address": "10.0.0.7", "lag": 0}]}},
        "d2": {
            "postgresql": {
                "role": "standby",
                "streaming": True,
                "source": "10.0.0.6",
                "replay_seconds": 3.2,
            }
        },
    }
    (line,) = summarize(answers, NAMES)
    assert line == TierLine(
        "docstore",
        "PostgreSQL: primary d1; standby d2 streaming from d1, last replay 3 s ago; d2 0 B behind",
        True,
    )
    answers["d2"]["postgresql"]["streaming"] = False
    assert not summarize(answers, NAMES)[0].healthy


def test_no_tier_reported_no_line() -> None:
    assert summarize({"c1": {"address": "10.0.0.1"}}, NAMES) == []
