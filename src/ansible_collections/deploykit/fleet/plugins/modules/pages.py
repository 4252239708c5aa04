#!/usr/bin/python
"""deploykit.fleet.pages: a release's baked pages published on a balancer, atomically."""

from __future__ import annotations

DOCUMENTATION = r"""
module: pages
short_description: Publish the baked pages of a release staged on a balancer
description:
  - Copies the release's C(baked/) into C(static/releases/<release_id>) (made whole under a
    temporary name, then renamed), switches C(static/current) to it atomically, rewrites the list
    of baked paths HAProxy routes to nginx and reloads HAProxy when the list changed, and prunes
    the oldest published pages beyond O(keep) (never the live ones).
  - A release whose contract bakes nothing publishes nothing (HAProxy sends every request to the
    clones).
options:
  app_root: {description: Where the application lives (the release is staged in releases/)., type: path, required: true}
  release_id: {description: The release whose pages to publish., type: str, required: true}
  keep: {description: Published pages kept., type: int, default: 5}
  paths_file: {description: The list of baked paths HAProxy reads., type: path, default: /etc/haproxy/baked-paths.lst}
  reload: {description: Reload HAProxy when the list changed., type: bool, default: true}
"""

RETURN = r"""
published: {description: Whether the release bakes pages., returned: always, type: bool}
paths: {description: The URL paths HAProxy routes to the pages., returned: when published, type: list}
"""

import os
import shutil
from urllib.parse import quote

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.deploykit.fleet.plugins.module_utils.release import (
    ReleaseProblem,
    load_manifest,
    prune,
    stamp,
    switch_current,
)

HEADER = """\
# Written by deploykit (deploykit.fleet.pages): do not edit.
#
# The baked pages of {name} {release}, one URL path a line. HAProxy sends GET and HEAD requests
# for exactly these paths to nginx (backend static), as long as nginx is up; everything else
# goes to the app clones. HAProxy reads it at start and at every reload.
"""


def baked_paths(files: dict) -> list[str]:
    paths = set()
    for name in files:
        if not name.startswith("baked/"):
            continue
        page = name[len("baked/") :]
        if page == "index.html" or page.endswith("/index.html"):
            paths.add(quote("/" + page[: -len("index.html")], safe="/"))
        paths.add(quote("/" + page, safe="/"))
    return sorted(paths)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "app_root": {"type": "path", "required": True},
            "release_id": {"type": "str", "required": True},
            "keep": {"type": "int", "default": 5},
            "paths_file": {"type": "path", "default": "/etc/haproxy/baked-paths.lst"},
            "reload": {"type": "bool", "default": True},
        },
        supports_check_mode=True,
    )
    p = module.params
    release_id = p["release_id"]
    release_dir = os.path.join(p["app_root"], "releases", release_id)
    try:
        manifest = load_manifest(release_dir)
    except ReleaseProblem as error:
        module.fail_json(msg=f"release {release_id} is not staged on this balancer: {error}")
    if not (manifest.get("contract") or {}).get("bake"):
        module.exit_json(changed=False, published=False, release_id=release_id)
    static = os.path.join(p["app_root"], "static")
    target = os.path.join(static, "releases", release_id)
    paths = baked_paths(manifest["files"])
    content = HEADER.format(name=manifest["name"], release=release_id) + "".join(
        f"{x}\n" for x in paths
    )
    try:
        with open(p["paths_file"], encoding="utf-8") as handle:
            list_changed = handle.read() != content
    except FileNotFoundError:
        list_changed = True
    current = os.path.join(static, "current")
    switched = not (os.path.islink(current) and os.readlink(current) == f"releases/{release_id}")
    if module.check_mode:
        module.exit_json(changed=switched or list_changed, published=True, paths=paths)
    changed = False
    for path in (static, os.path.join(static, "releases")):
        if not os.path.isdir(path):
            os.mkdir(path, 0o755)
            changed = True
    if not os.path.isdir(target):
        partial = os.path.join(static, "releases", f".{release_id}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(os.path.join(release_dir, "baked"), partial, copy_function=shutil.copy)
        os.rename(partial, target)
        changed = True
    changed |= stamp(target)
    _, switched = switch_current(static, release_id)
    if list_changed:
        partial = p["paths_file"] + ".partial"
        with open(partial, "w", encoding="utf-8") as handle:
            handle.write(content)
        os.chmod(partial, 0o644)
        os.replace(partial, p["paths_file"])
        if p["reload"]:
            rc, out, err = module.run_command(["systemctl", "reload", "haproxy.service"])
            if rc != 0:
                module.fail_json(msg=f"systemctl reload haproxy: rc {rc}: {(err or out).strip()}")
    pruned = prune(os.path.join(static, "releases"), p["keep"], current, [release_id])["removed"]
    module.exit_json(
        changed=changed or switched or list_changed or bool(pruned),
        published=True,
        release_id=release_id,
        paths=paths,
        pruned=pruned,
    )


if __name__ == "__main__":
    main()
