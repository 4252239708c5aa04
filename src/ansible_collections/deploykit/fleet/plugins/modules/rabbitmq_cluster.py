#!/usr/bin/python
"""deploykit.fleet.rabbitmq_cluster: the local RabbitMQ node is a member of the group's cluster."""

from __future__ import annotations

DOCUMENTATION = r"""
module: rabbitmq_cluster
short_description: Join the local RabbitMQ node to the cluster of its group, once
description:
  - A node already clustered with another member is left alone. A node alone joins the cluster
    the other members already form, else the first member (the seed of a new group), which
    itself stays as it is (module_utils/rabbitmq.py says why).
  - Joining resets the node: a node alone that holds messages is refused unless O(force).
  - Runs rabbitmqctl; run it as the rabbitmq account (become_user), with the cluster's cookie.
options:
  node: {description: The local node's name., type: str, required: true}
  members: {description: Every member's node name in inventory order (the first is the seed)., type: list, elements: str, required: true}
  timeout: {description: Seconds the whole step may take (asking the members, joining, booting again)., type: int, default: 120}
  force: {description: Join even when the node holds messages (they are lost)., type: bool, default: false}
"""

RETURN = r"""
action: {description: C(member), C(seed) or C(join)., returned: success, type: str}
joined: {description: The node joined through (empty unless C(join))., returned: success, type: str}
disk_nodes: {description: The cluster's nodes afterwards, as this node sees them., returned: success, type: list}
strangers: {description: Nodes of the cluster that the group no longer lists., returned: success, type: list}
"""

import json
import subprocess
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.deploykit.fleet.plugins.module_utils.rabbitmq import (
    ClusterError,
    Membership,
    plan_membership,
    strangers,
)

#: Seconds to ask another member for its cluster status: a member that does not answer in this
#: time is treated as down (the CLI's own connection set-up takes about 7 s to give up).
PEER_TIMEOUT = 10


class Ctl:
    """rabbitmqctl against one node, every call bounded by the step's deadline."""

    def __init__(self, deadline: float, timeout: int) -> None:
        self.deadline = deadline
        self.timeout = timeout

    def __call__(self, node: str, *args: str, limit: float | None = None) -> str:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise ClusterError(
                f"the step's deadline ({self.timeout} s) passed before rabbitmqctl {args[0]}"
            )
        seconds = min(left, limit) if limit else left
        try:
            result = subprocess.run(
                ["rabbitmqctl", "-q", "--node", node, *args],
                capture_output=True,
                text=True,
                timeout=seconds,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise ClusterError(
                f"rabbitmqctl --node {node} {args[0]}: no answer within {seconds:.0f} s"
            ) from error
        if result.returncode != 0:
            text = " ".join((result.stderr or result.stdout).split())
            raise ClusterError(
                f"rabbitmqctl --node {node} {' '.join(args)} exited {result.returncode}: {text}"
            )
        return result.stdout

    def membership(self, node: str, limit: float | None = None) -> Membership:
        return Membership.from_json(
            self(node, "cluster_status", "--formatter", "json", limit=limit)
        )

    def messages(self, node: str) -> int:
        """Messages the node holds, over every vhost."""
        total = 0
        for vhost in json.loads(self(node, "list_vhosts", "name", "--formatter", "json")):
            queues = json.loads(
                self(node, "list_queues", "-p", vhost["name"], "messages", "--formatter", "json")
            )
            total += sum(int(queue.get("messages") or 0) for queue in queues)
        return total


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "node": {"type": "str", "required": True},
            "members": {"type": "list", "elements": "str", "required": True},
            "timeout": {"type": "int", "default": 120},
            "force": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    node, members, timeout = (
        module.params["node"],
        module.params["members"],
        module.params["timeout"],
    )
    started = time.monotonic()
    ctl = Ctl(started + timeout, timeout)
    joined = ""
    try:
        local = ctl.membership(node)
        peers: dict[str, Membership | None] = {}
        silent: dict[str, str] = {}
        if not set(local.disk_nodes) & (set(members) - {node}):
            for member in members:
                if member == node:
                    continue
                try:
                    peers[member] = ctl.membership(member, limit=PEER_TIMEOUT)
                except ClusterError as error:
                    peers[member], silent[member] = None, str(error)
        try:
            plan = plan_membership(node, members, local, peers)
        except ClusterError as error:
            # Why each member did not answer (a firewall, another cookie, a stopped node).
            raise ClusterError(f"{error} ({'; '.join(silent.values())})") from None
        if plan.action == "join":
            held = ctl.messages(node)
            if held and not module.params["force"]:
                raise ClusterError(
                    f"{node} holds {held} message(s) and joining {plan.target} resets it (they would be "
                    "lost). Let the consumers empty its queues, or set rabbitmq_cluster_join_force, "
                    "and run again."
                )
            if not module.check_mode:
                ctl(node, "stop_app")
                try:
                    ctl(node, "join_cluster", plan.target)
                finally:
                    # Serving again whatever happened: a failed join leaves the node as it was.
                    ctl(node, "start_app")
                left = max(1, int(ctl.deadline - time.monotonic()))
                ctl(node, "await_startup", "--timeout", str(left))
                local = ctl.membership(node)
            joined = plan.target
    except (ClusterError, ValueError) as error:
        elapsed = time.monotonic() - started
        module.fail_json(
            msg=f"RabbitMQ cluster membership of {node} (after {elapsed:.1f} s of {timeout} s): {error}"
        )
    module.exit_json(
        changed=plan.action == "join",
        action=plan.action,
        joined=joined,
        disk_nodes=sorted(local.disk_nodes),
        strangers=strangers(node, members, local),
    )


if __name__ == "__main__":
    main()
