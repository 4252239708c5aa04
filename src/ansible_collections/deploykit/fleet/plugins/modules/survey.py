#!/usr/bin/python
"""deploykit.fleet.survey: what a node runs, as the node itself reports it (nothing changes)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: survey
short_description: Report what a node runs (releases, services, health, HAProxy's view)
description:
  - For an app clone or a worker, the release C(current) points to, its manifest checksum, the
    releases kept (oldest first), the unit's state and the release its process runs; for a
    clone, what its health path reports too.
  - For a balancer, HAProxy's view of every app server (runtime API), its maintenance mode and
    which release's pages are published.
  - Never fails: what cannot be read is reported as an error beside the rest.
options:
  app_root: {description: Where the application lives., type: path, required: true}
  app_unit: {description: The web unit, on an app clone., type: str}
  health_address: {description: "The clone's own base URL (http://ADDRESS:PORT); the readiness URL is it and the live release's contract.health_path.", type: str}
  worker_unit: {description: The worker unit, on a worker., type: str}
  backend: {description: The HAProxy backend of the app servers, on a balancer., type: str}
  virtual_address: {description: "The balancers' floating address (keepalived_virtual_address), on a balancer: reported held or not.", type: str}
  configuration: {description: "The controller's digest of the configuration code and inventory (the rollout's rollout_configuration): the node reports whether it was configured for its live release with it (configured). Empty: not reported.", type: str, default: ""}
  socket: {description: HAProxy's admin socket., type: path, default: /run/haproxy/admin.sock}
  config: {description: "HAProxy's configuration, where the backend's check path is read.", type: path, default: /etc/haproxy/haproxy.cfg}
"""

RETURN = r"""
report: {description: "{app, app_error, worker, worker_error, apps, lb, lb_error, static, static_bake, check_path, maintenance, configured}; configured: whether the node's last configuration is the one O(configuration) and its live release make (absent without O(configuration)); static: the release whose pages the balancer serves, static_bake: the bake from live data they come from, if any; virtual_address: {address, held}, the floating address and whether this balancer holds it; maintenance: the balancer's maintenance mode (module_utils/maintenance.py), null where HAProxy has none; apps: every application deploykit installed on an app clone or worker, {app: {unit: {active, enabled}}}; check_path: the path HAProxy checks the app servers on", returned: always, type: dict}
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.deploykit.fleet.plugins.module_utils.haproxy import (
    Failure,
    check_path,
    list_servers,
)
from ansible_collections.deploykit.fleet.plugins.module_utils.maintenance import read_runtime
from ansible_collections.deploykit.fleet.plugins.module_utils.pages import served_pages
from ansible_collections.deploykit.fleet.plugins.module_utils.release import (
    ReleaseProblem,
    configuration,
    deploykit_apps,
    live_release,
    load_manifest,
    survey,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "app_root": {"type": "path", "required": True},
            "app_unit": {"type": "str"},
            "health_address": {"type": "str"},
            "worker_unit": {"type": "str"},
            "backend": {"type": "str"},
            "virtual_address": {"type": "str"},
            "configuration": {"type": "str", "default": ""},
            "socket": {"type": "path", "default": "/run/haproxy/admin.sock"},
            "config": {"type": "path", "default": "/etc/haproxy/haproxy.cfg"},
        },
        supports_check_mode=True,
    )
    p = module.params
    report: dict = {}
    # The live release's manifest, read once: its contract names the health path, and the
    # node's configuration is judged against it.
    manifest = None
    if p["health_address"] or p["configuration"]:
        live = live_release(
            os.path.join(p["app_root"], "current"), os.path.join(p["app_root"], "releases")
        )
        try:
            manifest = (
                load_manifest(os.path.join(p["app_root"], "releases", live)) if live else None
            )
        except ReleaseProblem:
            manifest = None
    url = None
    if p["health_address"]:
        contract = (manifest or {}).get("contract") or {}
        url = p["health_address"].rstrip("/") + str(contract.get("health_path") or "/healthz")
    for role, unit, health_url in (("app", p["app_unit"], url), ("worker", p["worker_unit"], None)):
        if not unit:
            continue
        try:
            report[role] = survey(p["app_root"], [unit], health_url)
        except Exception as error:  # a report, not a failure: the rollout decides
            report[role], report[f"{role}_error"] = None, str(error)[:300]
    if p["configuration"] and manifest is not None:
        # Whether the node was configured for its live release by this configuration (the same
        # code and inventory): a deploy of a release every node runs is settled only then, so
        # that after an upgrade of deploykit or a change of the inventory it configures again.
        configured = configuration(p["app_root"], p["configuration"], manifest)
        report["configured"] = configured["configured"]
    if p["app_unit"] or p["worker_unit"]:
        # Which applications this node serves, whichever one the rollout is for: a fleet serves
        # one application, and another one's deploy must not take its port.
        report["apps"] = deploykit_apps()
    if p["backend"]:
        report["check_path"] = check_path(p["config"], p["backend"])
        try:
            report["lb"] = {"servers": list_servers(p["socket"], p["backend"])}
        except Failure as error:
            report["lb"], report["lb_error"] = None, str(error)[:300]
        try:
            report["maintenance"] = read_runtime(p["socket"]).to_dict()
        except Failure:  # a configuration from before maintenance mode: it cannot be on
            report["maintenance"] = None
        if p["virtual_address"]:
            # The balancers' floating address (keepalived role): does this one hold it now?
            address = p["virtual_address"].split("/")[0]
            rc, out, _ = module.run_command(["ip", "-4", "-o", "addr", "show"])
            report["virtual_address"] = {
                "address": address,
                "held": rc == 0 and f" {address}/" in out,
            }
        # The release whose pages are served (a bake from live data counts as its release's).
        report["static"], report["static_bake"] = served_pages(p["app_root"])
    module.exit_json(changed=False, report=report)


if __name__ == "__main__":
    main()
