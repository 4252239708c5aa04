"""What runs where: the fleet's state as its nodes report it (the survey module's reports), and
whether a node already runs a release in service. Standard library only: the controller imports it
(deploykit status, every rollout's plan) and so does the ledger on the balancer, which finishes a
deploy with nothing to do in the rollout's first run (module_utils/ledger.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.deploykit.fleet.plugins.module_utils.release import serving
from ansible_collections.deploykit.fleet.plugins.module_utils.tiers import TierLine


@dataclass
class NodeStatus:
    """One role of one host, as the host itself reports it."""

    host: str
    role: str  # app, worker, lb
    groups: list[str]
    #: The release the running service reports (its process; for the app, its health path too).
    release: str | None = None
    #: The release ``current`` points to.
    current: str | None = None
    checksum: str | None = None
    service: str | None = None
    #: HAProxy's view of this clone (app only), e.g. UP, DRAIN, MAINT, DOWN; one per balancer.
    haproxy: str | None = None
    releases: list[str] = field(default_factory=list)
    problem: str | None = None
    #: Every application deploykit installed on the node (app clone, worker), whichever one the
    #: survey is for: {app: {unit: {"active", "enabled"}}}.
    apps: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The path HAProxy checks the app servers on (balancer only).
    check_path: str | None = None
    #: Its maintenance mode (balancer only; module_utils/maintenance.py's Maintenance as a dict).
    maintenance: dict[str, Any] | None = None
    #: The bake from live data whose pages it serves (balancer only; None: the release's own).
    pages_bake: str | None = None
    #: The floating address (balancer only, with keepalived): {"address", "held"}.
    virtual_address: dict[str, Any] | None = None
    #: Whether the node's last configuration is the one this deploykit and inventory make for its
    #: live release (None: not asked, as by `deploykit status`, or no live release).
    configured: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "role": self.role,
            "groups": self.groups,
            "release": self.release,
            "current": self.current,
            "checksum": self.checksum,
            "service": self.service,
            "haproxy": self.haproxy,
            "releases": self.releases,
            "problem": self.problem,
            "apps": self.apps,
            "check_path": self.check_path,
            "maintenance": self.maintenance,
            "pages_bake": self.pages_bake,
            "virtual_address": self.virtual_address,
            "configured": self.configured,
        }


@dataclass
class StatusReport:
    app: str
    nodes: list[NodeStatus]
    #: One line per shared-service tier with redundancy (module_utils/tiers.py), for status.
    tiers: list[TierLine] = field(default_factory=list)

    def of(self, role: str) -> list[NodeStatus]:
        return [node for node in self.nodes if node.role == role]

    @property
    def drift(self) -> list[str]:
        """Why the fleet is not one release everywhere (empty when it is)."""
        reasons: list[str] = []
        runners = [n for n in self.nodes if n.role in ("app", "worker")]
        releases = {n.release for n in runners}
        if len(releases) > 1:
            by_release: dict[str, list[str]] = {}
            for node in runners:
                by_release.setdefault(str(node.release), []).append(f"{node.host} ({node.role})")
            reasons.append(
                "clones differ: "
                + "; ".join(
                    f"{release} on {', '.join(h)}" for release, h in sorted(by_release.items())
                )
            )
        checksums = {n.checksum for n in runners if n.checksum}
        if len(checksums) > 1:
            reasons.append("manifest checksums differ between nodes")
        for node in runners:
            if (
                node.release is not None
                and node.current is not None
                and node.release != node.current
            ):
                reasons.append(
                    f"{node.host} ({node.role}) runs {node.release} "
                    f"but current points to {node.current}"
                )
        return reasons

    @property
    def foreign(self) -> dict[str, dict[str, list[str]]]:
        """{app: {unit: [hosts]}}: the other applications the fleet's clones and workers serve (a
        unit that runs, starts or is enabled). A fleet serves one application."""
        found: dict[str, dict[str, set[str]]] = {}
        for node in self.nodes:
            for name, units in node.apps.items():
                if name == self.app or not serving(units):
                    continue
                for unit in units:
                    found.setdefault(name, {}).setdefault(unit, set()).add(node.host)
        return {
            name: {unit: sorted(hosts) for unit, hosts in sorted(units.items())}
            for name, units in sorted(found.items())
        }

    @property
    def live(self) -> str | None:
        """The release every app clone and worker runs, or None when they differ."""
        releases = {n.release for n in self.nodes if n.role in ("app", "worker")}
        return releases.pop() if len(releases) == 1 else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "live": self.live,
            "drift": bool(self.drift),
            "drift_reasons": self.drift,
            "nodes": [node.to_dict() for node in self.nodes],
            "tiers": [
                {"tier": line.tier, "text": line.text, "healthy": line.healthy}
                for line in self.tiers
            ],
        }


def _haproxy_views(data: Mapping[str, Any]) -> dict[str, list[str]]:
    views: dict[str, list[str]] = {}
    for _, report in sorted(data.items()):
        lb = report.get("lb") if isinstance(report, Mapping) else None
        if not isinstance(lb, Mapping):
            continue
        for server in lb.get("servers") or []:
            views.setdefault(str(server.get("server")), []).append(f"{server.get('status')}")
    return views


def _runner_node(
    host: str, role: str, unit: str, report: Mapping[str, Any], views: Mapping[str, list[str]]
) -> NodeStatus:
    """An app clone's or a worker's status from its survey (tasks/survey.yml)."""
    groups = [str(g) for g in report.get("groups") or []]
    node = NodeStatus(host=host, role=role, groups=groups, configured=_configured(report))
    survey = report.get(role)
    if not isinstance(survey, Mapping):
        node.problem = str(report.get(f"{role}_error") or "no answer")[:300]
        return node
    state = (survey.get("units") or {}).get(unit) or {}
    apps = report.get("apps")
    node.apps = dict(apps) if isinstance(apps, Mapping) else {}
    node.current = survey.get("current")
    node.checksum = survey.get("checksum")
    node.releases = [str(r) for r in survey.get("releases") or []]
    node.service = state.get("active")
    node.release = state.get("release") if state.get("pid") else None
    if role == "worker" and unit not in node.apps.get(unit.removesuffix("-worker@.service"), {}):
        # The application has no worker: nothing of it is installed to run here, and the node
        # holds the release its current link points to (activate switches it all the same).
        node.release = node.current
    if role != "app":
        return node
    node.haproxy = "/".join(views[host]) if host in views else None
    health = survey.get("health")
    if not isinstance(health, Mapping):
        return node
    reported = health.get("release")
    if health.get("status") == 200 and reported:
        if node.release and reported != node.release:
            node.problem = f"its process runs {node.release}, its health path reports {reported}"
        # What the service itself says it runs is the live release.
        node.release = str(reported)
    elif node.service == "active":
        answer = health.get("status") or health.get("error") or "no answer"
        node.problem = f"health path: {answer}"
    return node


def _balancer_node(host: str, report: Mapping[str, Any]) -> NodeStatus:
    groups = [str(g) for g in report.get("groups") or []]
    node = NodeStatus(
        host=host,
        role="lb",
        groups=groups,
        current=report.get("static"),
        configured=_configured(report),
    )
    node.check_path = report.get("check_path")
    node.release = node.current
    node.pages_bake = report.get("static_bake")
    virtual = report.get("virtual_address")
    node.virtual_address = dict(virtual) if isinstance(virtual, Mapping) else None
    maintenance = report.get("maintenance")
    node.maintenance = dict(maintenance) if isinstance(maintenance, Mapping) else None
    lb = report.get("lb")
    if not isinstance(lb, Mapping):
        node.problem = str(report.get("lb_error") or "no answer from HAProxy")[:300]
    else:
        servers = lb.get("servers") or []
        up = sum(1 for server in servers if server.get("status") == "UP")
        node.service = f"{up}/{len(servers)} app servers UP"
    return node


def _configured(report: Mapping[str, Any]) -> bool | None:
    configured = report.get("configured")
    return configured if isinstance(configured, bool) else None


def status_from_survey(app: str, nodes: Mapping[str, Any]) -> StatusReport:
    """Turn the survey's per-host reports (tasks/survey.yml) into a :class:`StatusReport`."""
    views = _haproxy_views(nodes)
    result: list[NodeStatus] = []
    units = (("app", f"{app}-web.service"), ("worker", f"{app}-worker@.service"))
    for host, report in sorted(nodes.items()):
        if not isinstance(report, Mapping):
            continue
        groups = report.get("groups") or []
        result.extend(
            _runner_node(host, role, unit, report, views) for role, unit in units if role in groups
        )
        if "lb" in groups:
            result.append(_balancer_node(host, report))
    return StatusReport(app=app, nodes=result)


def _in_service(node: NodeStatus) -> bool:
    """Every balancer sees the clone UP (a node that is not a clone: always)."""
    if node.role != "app":
        return True
    views = (node.haproxy or "").split("/")
    return all(view == "UP" for view in views)


def is_settled(node: NodeStatus, release: str) -> bool:
    """The node runs ``release``, ``current`` points to it, it was configured for it by this
    deploykit and inventory (after an upgrade or an inventory change, a deploy of the same
    release configures the nodes again), and (a clone) every balancer sends it requests. A
    clone left drained or in maint by an interrupted rollout is not settled: the next deploy
    readies it even when its release is already the right one."""
    return (
        node.release == node.current == release
        and node.configured is not False
        and _in_service(node)
    )


def settled_everywhere(report: StatusReport, release: str) -> bool:
    """Every app clone, worker and balancer runs ``release`` in service: a deploy of it has
    nothing to do."""
    nodes = [n for n in report.nodes if n.role in ("app", "worker", "lb")]
    return bool(nodes) and all(is_settled(n, release) for n in nodes)
