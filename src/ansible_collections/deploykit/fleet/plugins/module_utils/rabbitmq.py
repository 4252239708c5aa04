"""A RabbitMQ cluster's membership (the rabbitmq role with rabbitmq_cluster). Standard library only.

One fact, one implementation, used by the module deploykit.fleet.rabbitmq_cluster on the queue
hosts (and by tests/unit/test_rabbitmq_cluster.py): **what a node does to be in the cluster**.

- A node already clustered with another member of the group is left alone (a converge never
  resets a node: that throws its messages away).
- A node alone joins a cluster that is already formed among the other members, whichever member
  it reaches first: a rebuilt host, the first one included, joins the nodes that kept running.
- On a new group every node is alone: the first member (the seed) stays as it is and the others
  join it. A node alone that would have to join a seed that does not answer is an error, never
  a second cluster of its own.

Node names are ``rabbit@<private address>`` (long names), so that no member depends on DNS.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


class ClusterError(Exception):
    """The node cannot be put in the cluster safely; the message says why and what to do."""


@dataclass(frozen=True)
class Membership:
    """What ``rabbitmqctl cluster_status`` says of a node's cluster."""

    disk_nodes: tuple[str, ...]
    running_nodes: tuple[str, ...]

    @classmethod
    def from_json(cls, text: str) -> Membership:
        """Parse ``rabbitmqctl cluster_status --formatter json``."""
        data = json.loads(text)
        return cls(
            disk_nodes=tuple(data.get("disk_nodes", [])) + tuple(data.get("ram_nodes", [])),
            running_nodes=tuple(data.get("running_nodes", [])),
        )


@dataclass(frozen=True)
class Plan:
    """``action`` is ``member`` (nothing to do), ``seed`` (first of a new group: nothing to do
    yet, the others join it) or ``join`` (join ``target``)."""

    action: str
    target: str = ""


def plan_membership(
    node: str,
    members: Sequence[str],
    local: Membership,
    peers: Mapping[str, Membership | None],
) -> Plan:
    """What ``node`` does, from its own cluster status and the other members' (None: no answer).

    ``members`` is the group's node names in inventory order; ``peers`` holds the answers of the
    members other than ``node`` (asked only when ``node`` is alone)."""
    if node not in members:
        raise ClusterError(f"{node} is not one of the cluster's nodes ({', '.join(members)})")
    others = [member for member in members if member != node]
    if set(local.disk_nodes) & set(others):
        return Plan("member")
    # Alone (or only with nodes that left the group): a cluster already formed among the others
    # wins, the first that answers in inventory order.
    for member in others:
        answer = peers.get(member)
        if answer is not None and len(answer.disk_nodes) > 1:
            return Plan("join", member)
    if node == members[0]:
        return Plan("seed")
    seed = members[0]
    if peers.get(seed) is None:
        raise ClusterError(
            f"{node} is alone and the first node of the group, {seed}, does not answer: a new "
            "cluster forms around the first node. Start RabbitMQ there (or put a running node "
            "first in the group) and run again."
        )
    return Plan("join", seed)


def strangers(node: str, members: Sequence[str], local: Membership) -> list[str]:
    """The nodes of this node's cluster that the group does not list (hosts taken out of the
    inventory): RabbitMQ still counts them, ``rabbitmqctl forget_cluster_node`` removes them."""
    return sorted(set(local.disk_nodes) - set(members) - {node})
