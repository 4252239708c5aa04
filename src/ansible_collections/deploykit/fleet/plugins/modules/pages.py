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

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.deploykit.fleet.plugins.module_utils.pages import (
    PagesProblem,
    baked_paths,
    go_live,
    make_dirs,
    paths_list,
    reload_haproxy,
    write_paths_list,
)
from ansible_collections.deploykit.fleet.plugins.module_utils.release import (
    ReleaseProblem,
    load_manifest,
)


def release_pages(files: dict) -> list[str]:
    """The pages a release bakes: its manifest's files under baked/, relative to it."""
    return [name[len("baked/") :] for name in files if name.startswith("baked/")]


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
    paths = baked_paths(release_pages(manifest["files"])) if bakes else []
    label = manifest["name"]
    content = paths_list(label, paths)
    try:
        with open(p["paths_file"], encoding="utf-8") as handle:
            list_changed = handle.read() != content
    except FileNotFoundError:
        list_changed = True
    reload = reload_haproxy if p["reload"] else None
    try:
        if not bakes:
            # Nothing to publish; the list of another release (or application) must not route
            # its pages any more.
            if list_changed and not module.check_mode:
                write_paths_list(p["paths_file"], content, reload)
            module.exit_json(changed=list_changed, published=False, release_id=release_id, paths=[])
        current = os.path.join(static, "current")
        relinked = not (os.path.islink(p["live_link"]) and os.readlink(p["live_link"]) == current)
        switched = not (
            os.path.islink(current) and os.readlink(current) == f"releases/{release_id}"
        )
        if module.check_mode:
            module.exit_json(
                changed=switched or relinked or list_changed, published=True, paths=paths
            )
        make_dirs(static, os.path.join(static, "releases"))
        copied = False
        if not os.path.isdir(target):
            partial = os.path.join(static, "releases", f".{release_id}.partial")
            shutil.rmtree(partial, ignore_errors=True)
            shutil.copytree(os.path.join(release_dir, "baked"), partial, copy_function=shutil.copy)
            os.rename(partial, target)
            copied = True
        answer = go_live(
            static, "releases", release_id, paths, label=label, keep=p["keep"],
            paths_file=p["paths_file"], live_link=p["live_link"], reload=reload,
        )  # fmt: skip
    except (PagesProblem, OSError, ValueError) as error:
        module.fail_json(msg=f"publishing the pages of {release_id}: {error}")
    module.exit_json(
        changed=copied or answer["changed"],
        published=True,
        release_id=release_id,
        paths=paths,
        pruned=answer["pruned"],
    )


if __name__ == "__main__":
    main()
