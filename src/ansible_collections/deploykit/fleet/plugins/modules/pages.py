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
  - nginx serves O(live_link), which points at the C(static/current) of the application that
    publishes: the same on a balancer whichever application it serves, so staging another
    application (deploykit deploy --replace) changes nothing nginx serves until its pages are
    published.
  - A release whose contract bakes nothing publishes nothing, and empties the list of baked paths
    (HAProxy sends every request to the clones).
options:
  app_root: {description: Where the application lives (the release is staged in releases/)., type: path, required: true}
  release_id: {description: The release whose pages to publish., type: str, required: true}
  keep: {description: Published pages kept., type: int, default: 5}
  paths_file: {description: The list of baked paths HAProxy reads., type: path, default: /etc/haproxy/baked-paths.lst}
  reload: {description: Reload HAProxy when the list changed., type: bool, default: true}
  live_link: {description: "The link nginx serves the pages from (its root), switched to this application's static/current.", type: path, default: /var/lib/deploykit-pages}
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
    switch_link,
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


def write_list(module: AnsibleModule, p: dict, content: str) -> None:
    """HAProxy's list of baked paths replaced atomically, then HAProxy reloaded (unless not asked)."""
    partial = p["paths_file"] + ".partial"
    with open(partial, "w", encoding="utf-8") as handle:
        handle.write(content)
    os.chmod(partial, 0o644)
    os.replace(partial, p["paths_file"])
    if p["reload"]:
        rc, out, err = module.run_command(["systemctl", "reload", "haproxy.service"])
        if rc != 0:
            module.fail_json(msg=f"systemctl reload haproxy: rc {rc}: {(err or out).strip()}")


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "app_root": {"type": "path", "required": True},
            "release_id": {"type": "str", "required": True},
            "keep": {"type": "int", "default": 5},
            "paths_file": {"type": "path", "default": "/etc/haproxy/baked-paths.lst"},
            "reload": {"type": "bool", "default": True},
            "live_link": {"type": "path", "default": "/var/lib/deploykit-pages"},
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
    static = os.path.join(p["app_root"], "static")
    target = os.path.join(static, "releases", release_id)
    bakes = bool((manifest.get("contract") or {}).get("bake"))
    paths = baked_paths(manifest["files"]) if bakes else []
    content = HEADER.format(name=manifest["name"], release=release_id) + "".join(
        f"{x}\n" for x in paths
    )
    try:
        with open(p["paths_file"], encoding="utf-8") as handle:
            list_changed = handle.read() != content
    except FileNotFoundError:
        list_changed = True
    if not bakes:
        # Nothing to publish; the list of another release (or application) must not route its
        # pages any more.
        if list_changed and not module.check_mode:
            write_list(module, p, content)
        module.exit_json(changed=list_changed, published=False, release_id=release_id, paths=[])
    current = os.path.join(static, "current")
    relinked = not (os.path.islink(p["live_link"]) and os.readlink(p["live_link"]) == current)
    switched = not (os.path.islink(current) and os.readlink(current) == f"releases/{release_id}")
    if module.check_mode:
        module.exit_json(changed=switched or relinked or list_changed, published=True, paths=paths)
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
    try:
        relinked = switch_link(p["live_link"], current)
    except (OSError, ValueError) as error:
        module.fail_json(msg=f"the pages nginx serves ({p['live_link']}): {error}")
    if list_changed:
        write_list(module, p, content)
    pruned = prune(os.path.join(static, "releases"), p["keep"], current, [release_id])["removed"]
    module.exit_json(
        changed=changed or switched or relinked or list_changed or bool(pruned),
        published=True,
        release_id=release_id,
        paths=paths,
        pruned=pruned,
    )


if __name__ == "__main__":
    main()
