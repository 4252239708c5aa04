"""What a RabbitMQ node does to be in its group's cluster (module_utils/rabbitmq.py's
plan_membership), from its own cluster status and the other members' answers. The module that
carries it out is proved on real nodes by the molecule scenario ``rabbitmq``."""

from __future__ import annotations

import json

import pytest

from ansible_collections.deploykit.fleet.plugins.module_utils.rabbitmq import (
    ClusterError,
    Membership,
    Plan,
    plan_membership,
    strangers,
)

A, B, C = "rabbit@10.0.0.1", "rabbit@10.0.0.2", "rabbit@10.0.0.3"
MEMBERS = [A, B, C]


def alone(node: str) -> Membership:
    return Membership(disk_nodes=(node,), running_nodes=(node,))


def clustered(*nodes: str) -> Membership:
    return Membership(disk_nodes=nodes, running_nodes=nodes)


def test_a_member_is_left_alone_and_nobody_is_asked() -> None:
    assert plan_membership(B, MEMBERS, clustered(A, B), {}) == Plan("member")


def test_a_new_group_forms_around_its_first_node() -> None:
    peers = {B: alone(B), C: alone(C)}
    assert plan_membership(A, MEMBERS, alone(A), peers) == Plan("seed")
    assert plan_membership(B, MEMBERS, alone(B), {A: alone(A), C: alone(C)}) == Plan("join", A)


def test_a_node_joins_the_cluster_the_others_already_form() -> None:
    # C comes after B has joined A: it joins the formed cluster (A first in inventory order).
    peers = {A: clustered(A, B), B: clustered(A, B)}
    assert plan_membership(C, MEMBERS, alone(C), peers) == Plan("join", A)


def test_a_rebuilt_first_node_joins_the_survivors_instead_of_seeding_a_second_cluster() -> None:
    peers = {B: clustered(B, C), C: clustered(B, C)}
    assert plan_membership(A, MEMBERS, alone(A), peers) == Plan("join", B)


def test_a_formed_cluster_is_joined_through_whichever_member_answers() -> None:
    peers = {A: None, B: clustered(A, B, C)}
    assert plan_membership(C, MEMBERS, alone(C), peers) == Plan("join", B)


def test_a_node_alone_never_seeds_a_cluster_of_its_own_when_the_seed_is_silent() -> None:
    with pytest.raises(ClusterError, match=f"first node of the group, {A}, does not answer"):
        plan_membership(C, MEMBERS, alone(C), {A: None, B: alone(B)})


def test_a_node_outside_the_group_is_an_error() -> None:
    with pytest.raises(ClusterError, match="not one of the cluster's nodes"):
        plan_membership("rabbit@10.0.0.9", MEMBERS, alone("rabbit@10.0.0.9"), {})


def test_nodes_the_group_no_longer_lists_are_reported() -> None:
    local = clustered(A, B, C, "rabbit@10.0.0.4")
    assert plan_membership(A, MEMBERS, local, {}) == Plan("member")
    assert strangers(A, MEMBERS, local) == ["rabbit@10.0.0.4"]


def test_cluster_status_json_is_read() -> None:
    text = json.dumps(
        {"disk_nodes": [A, B], "ram_nodes": [C], "running_nodes": [A], "cluster_name": "x"}
    )
    assert Membership.from_json(text) == Membership(disk_nodes=(A, B, C), running_nodes=(A,))
