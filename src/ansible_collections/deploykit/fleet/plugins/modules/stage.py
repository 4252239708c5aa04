#!/usr/bin/python
"""deploykit.fleet.stage: a release staged on a node, nothing live changed."""

from __future__ import annotations

DOCUMENTATION = r"""
module: stage
short_description: Stage a release on a node (upload, unpack, verify, offline virtualenv, stamp, prune)
description:
  - Everything a release needs on a node before it can go live, in one step; nothing live changes
    (C(current) is not touched).
  - The action plugin reads the artifact's manifest on the controller and uploads the artifact
    only when the node does not have the release yet.
  - The release is unpacked under a temporary name in the same pass that checks every file's
    sha256 against the manifest (nothing of the archive's owners or modes is kept; a member with
    a set-user-ID, set-group-ID, sticky or world-writable mode is refused), then renamed into
    place. A release already there is checked file by file instead (a file changed on the node
    since fails the step, naming it).
  - The virtualenv is built offline from the release's wheelhouse, once (a marker written last).
    When a release kept on the node has exactly the same dependencies (the same wheels, byte for
    byte), its virtualenv is copied and only the application's own wheel is installed into it:
    the previous version's files (its RECORD) are removed and the new wheel is installed by
    pypa/installer, which the build puts in the wheelhouse (pip, whose start alone costs about
    0.4 s of CPU per node, when the wheelhouse has no installer wheel).
  - Without such a release, installer puts the wheels the build resolved for the nodes (the
    manifest's C(install) list, each verified by its sha256) into a virtualenv made without pip,
    in one run (about 2.3 s of CPU on a lab clone for the shop's 29 wheels; pip took 6.9 s). The
    release's virtualenv then holds no installer at all. A release built before the build wrote
    that list installs with pip.
  - The work runs at the lowest CPU priority (nice 19): on a clone that serves, the live release
    comes first.
options:
  artifact: {description: The artifact on the controller (deploykit build's .tar.gz)., type: path, required: true}
  upload:
    description:
      - The node is known to lack the release (the controller's survey): upload the artifact
        without asking the node first. A node that has it after all keeps its copy (checked file
        by file) and the upload is discarded.
    type: bool
    default: false
  app_root: {description: Where the application lives; empty for /srv/<name>., type: str, default: ""}
  venv: {description: Build the release's virtualenv (false on the balancers, which run no app code)., type: bool, default: true}
  python: {description: The interpreter the virtualenv is made from., type: path, default: /usr/bin/python3}
  keep: {description: "Releases kept on the node (the live one, this one and any a process still runs always).", type: int, default: 5}
  configuration:
    description:
      - The fingerprint of what the node's configuration is made of besides the release (the
        rollout's C(rollout_configuration)); the module adds the release's name and contract.
        Empty: the node is always reported as not configured.
    type: str
    default: ""
"""

RETURN = r"""
release_id: {description: The release staged., returned: always, type: str}
manifest: {description: The release's manifest (without its files list)., returned: success, type: dict}
unpacked: {description: Whether the artifact was unpacked in this run., returned: success, type: bool}
venv_built: {description: Whether the virtualenv was built in this run., returned: success, type: bool}
pruned: {description: Releases removed beyond keep., returned: success, type: list}
seconds: {description: Seconds spent per part (unpack, verify, venv, prune)., returned: success, type: dict}
configuration:
  description:
    - The fingerprint of the node's configuration for this release (I(configuration) with the
      release's name and contract); empty without I(configuration).
  returned: always
  type: str
configured:
  description:
    - Whether the node's last configuration (C(<app_root>/shared/configured), which the rollout's
      stage playbook writes once a configuration succeeded) has this fingerprint: configuring it
      again would change nothing.
  returned: always
  type: bool
"""

import csv
import glob
import grp
import os
import pwd
import re
import shutil
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.deploykit.fleet.plugins.module_utils.release import (
    VENV,
    VENV_MARKER,
    ReleaseProblem,
    configuration,
    kept_releases,
    live_release,
    load_manifest,
    prune,
    running_releases,
    stamp,
    verify_artifact,
    verify_tree,
)


def ensure_dir(path: str, mode: int, owner: str = "root", group: str = "root") -> bool:
    """The directory exists with this mode and owner; True when something changed."""
    changed = False
    if not os.path.isdir(path):
        os.mkdir(path, mode)
        changed = True
    uid, gid = pwd.getpwnam(owner).pw_uid, grp.getgrnam(group).gr_gid
    info = os.lstat(path)
    if (info.st_uid, info.st_gid) != (uid, gid):
        os.chown(path, uid, gid)
        changed = True
    if info.st_mode & 0o7777 != mode:
        os.chmod(path, mode)
        changed = True
    return changed


def remove_later(module: AnsibleModule, path: str) -> None:
    """Take a pruned release out of releases/ at once (a rename), and delete it in the
    background at idle I/O priority: thousands of files of a virtualenv are not the deploy's to
    wait for (measured on the lab: 22-24 s of a loaded node's staging)."""
    # Beside releases/, on the same file system (a rename), and never taken for a release.
    trash = os.path.join(os.path.dirname(os.path.dirname(path)), ".trash")
    os.makedirs(trash, mode=0o700, exist_ok=True)
    target = os.path.join(trash, f"{os.path.basename(path)}.{time.time_ns()}")
    os.rename(path, target)
    rc, _, _ = module.run_command([
        "systemd-run", "--no-block", "--collect", "--quiet", "--property=Nice=19",
        "--property=IOSchedulingClass=idle", "/bin/rm", "-rf", "--one-file-system", target,
    ])  # fmt: skip
    if rc != 0:  # no systemd to hand it to: delete it now
        shutil.rmtree(target, ignore_errors=True)


def _canonical(name: str) -> str:
    """A distribution's name as wheel file names spell it (PEP 427/503): lower case, runs of
    '-', '_' and '.' as one '_'."""
    return re.sub(r"[-_.]+", "_", name).lower()


def dependencies(manifest: dict) -> dict[str, str]:
    """{wheel: sha256} of the wheelhouse without the application's own wheel."""
    project = re.split(r"[=<>!~ ;\[]", str(manifest.get("requirement") or ""), maxsplit=1)[0]
    return {
        name: digest
        for name, digest in (manifest.get("files") or {}).items()
        if name.startswith("wheelhouse/")
        and _canonical(os.path.basename(name).split("-")[0]) != _canonical(project)
    }


def seed_release(root: str, release_id: str, manifest: dict) -> str | None:
    """A release kept here whose complete virtualenv holds exactly this release's dependencies
    (the same wheels, byte for byte): the live one first, then the newest."""
    releases = os.path.join(root, "releases")
    wanted = dependencies(manifest)
    live = live_release(os.path.join(root, "current"), releases)
    for other in [live, *reversed(kept_releases(releases))]:
        if not other or other == release_id:
            continue
        if not os.path.exists(os.path.join(releases, other, VENV, VENV_MARKER)):
            continue
        try:
            if dependencies(load_manifest(os.path.join(releases, other))) == wanted:
                return other
        except ReleaseProblem:
            continue
    return None


def seed_venv(module: AnsibleModule, root: str, seed: str, release_dir: str) -> None:
    """Copy the seed release's virtualenv (hard links) and point it at this release: the paths its
    scripts and pyvenv.cfg name (compiled modules take their file names from where they are
    loaded)."""
    old = os.path.join(root, "releases", seed, VENV)
    new = os.path.join(release_dir, VENV)
    # Hard links: nothing in a release's virtualenv is written in place (pip and Python's own
    # bytecode cache write new files and rename them), so the two share the files they have in
    # common; the few this release changes are rewritten as new files below.
    rc, out, err = module.run_command(
        ["cp", "--archive", "--link", "--no-target-directory", old, new]
    )
    if rc != 0:
        module.fail_json(msg=f"copying the virtualenv of {seed}: {(err or out).strip()}")
    os.unlink(os.path.join(new, VENV_MARKER))
    bin_dir = os.path.join(new, "bin")
    paths = [os.path.join(bin_dir, n) for n in os.listdir(bin_dir)]
    for path in [*paths, os.path.join(new, "pyvenv.cfg")]:
        if os.path.islink(path) or not os.path.isfile(path):
            continue
        with open(path, "rb") as handle:
            content = handle.read()
        if old.encode() in content:
            # A new file renamed over the link: the seed's own file stays as it is.
            partial = f"{path}.partial"
            with open(partial, "wb") as handle:
                handle.write(content.replace(old.encode(), new.encode()))
            shutil.copymode(path, partial)
            os.replace(partial, path)


def _wheels(wheelhouse: str, project: str) -> list[str]:
    """The wheels of PROJECT in the wheelhouse."""
    return sorted(
        path
        for path in glob.glob(os.path.join(wheelhouse, "*.whl"))
        if _canonical(os.path.basename(path).split("-")[0]) == _canonical(project)
    )


def uninstall(module: AnsibleModule, venv: str, project: str) -> None:
    """Remove PROJECT from the virtualenv as pip would: every file its RECORD lists (scripts in
    bin/ too), their compiled modules, the directories left empty, and its .dist-info."""
    for site in glob.glob(os.path.join(venv, "lib", "python*", "site-packages")):
        for info in glob.glob(os.path.join(site, "*.dist-info")):
            if _canonical(os.path.basename(info).split("-")[0]) != _canonical(project):
                continue
            with open(os.path.join(info, "RECORD"), newline="", encoding="utf-8") as handle:
                listed = [row[0] for row in csv.reader(handle) if row]
            directories = set()
            for name in listed:
                path = os.path.normpath(os.path.join(site, name))
                if os.path.commonpath([path, venv]) != venv:
                    module.fail_json(msg=f"{info}/RECORD names a file outside {venv}: {name}")
                stem, suffix = os.path.splitext(path)
                cached = glob.glob(
                    os.path.join(os.path.dirname(path), "__pycache__", f"{os.path.basename(stem)}.*.pyc")
                ) if suffix == ".py" else []  # fmt: skip
                for victim in [path, *cached]:
                    if os.path.lexists(victim):
                        os.unlink(victim)
                        directories.add(os.path.dirname(victim))
            shutil.rmtree(info)
            # Deepest first: a package's __pycache__ before the package.
            for emptied in sorted(directories, key=len, reverse=True):
                directory = emptied
                while (
                    directory.startswith(site + os.sep)
                    and os.path.isdir(directory)
                    and not os.listdir(directory)
                ):
                    os.rmdir(directory)
                    directory = os.path.dirname(directory)


def install_list(manifest: dict, wheelhouse: str) -> list[str] | None:
    """The wheels the build resolved for the nodes (the manifest's I(install)), as paths in the
    wheelhouse; None for a release built before the build wrote that list. Each must be a wheel
    the manifest's files list names (so verified byte for byte), else ReleaseProblem."""
    names = manifest.get("install")
    if names is None:
        return None
    files = manifest.get("files") or {}
    if not isinstance(names, list) or not names:
        raise ReleaseProblem("the manifest's install list is not a list of wheels")
    for name in names:
        if (
            not isinstance(name, str)
            or os.path.basename(name) != name
            or not name.endswith(".whl")
            or f"wheelhouse/{name}" not in files
        ):
            raise ReleaseProblem(
                f"the manifest's install list names {name!r}, not a wheel of the wheelhouse"
            )
    return [os.path.join(wheelhouse, name) for name in names]


def build_venv(
    module: AnsibleModule, root: str, release_dir: str, python: str, manifest: dict
) -> str | None:
    """The release's virtualenv, offline from its wheelhouse. When a release kept here has the
    same dependencies, its virtualenv is the seed and only the application's own wheel is
    installed into it (measured on a lab clone: about 2 s instead of about 14), by installer when
    the wheelhouse has it (0.1 s; pip 0.4-0.5 s). Without a seed, installer puts the wheels the
    build resolved for the nodes into a virtualenv without pip (2.3 s of CPU on a lab clone, pip
    6.9 s); a release built before the build resolved them installs with pip. Returns the seed."""
    venv = os.path.join(release_dir, VENV)
    requirement = str(manifest["requirement"])
    shutil.rmtree(venv, ignore_errors=True)
    seed = seed_release(root, os.path.basename(release_dir), manifest)
    wheelhouse = os.path.join(release_dir, "wheelhouse")
    try:
        resolved = install_list(manifest, wheelhouse)
    except ReleaseProblem as problem:
        module.fail_json(msg=f"{os.path.basename(release_dir)}: {problem}")
    install = [
        os.path.join(venv, "bin", "python"), "-m", "pip", "install", "--no-index",
        f"--find-links={wheelhouse}", "--only-binary=:all:",
        "--no-cache-dir", "--disable-pip-version-check", "--no-input",
        "--root-user-action=ignore",
    ]  # fmt: skip
    # PIP_CONFIG_FILE=/dev/null: no pip.conf of the node (an index, a proxy) takes part.
    env = {"PIP_CONFIG_FILE": "/dev/null", "PIP_NO_INDEX": "1"}
    project = requirement.partition("==")[0]
    installer, own = _wheels(wheelhouse, "installer"), _wheels(wheelhouse, project)
    by_installer = len(installer) == 1
    # Without installer (or the app's own wheel), pip installs into the seed's copy: a seed that
    # installer made has no pip, so this release builds its own.
    seed_has_pip = bool(seed) and os.path.exists(
        os.path.join(root, "releases", str(seed), VENV, "bin", "pip")
    )
    if seed and not (by_installer and len(own) == 1) and not seed_has_pip:
        seed = None
    if seed:
        seed_venv(module, root, seed, release_dir)
    if seed and by_installer and len(own) == 1:
        # The application's own wheel only, its previous version removed first (installer
        # never writes over a file: the seed's hard-linked files stay as they are).
        uninstall(module, venv, project)
        steps = [[os.path.join(venv, "bin", "python"), "-m", "installer",
                  "--compile-bytecode", "0", own[0]]]  # fmt: skip
        env = {"PYTHONPATH": installer[0]}
    elif seed:
        steps = [[*install, "--no-deps", "--force-reinstall", requirement]]
    elif by_installer and resolved is not None:
        # Every wheel in one installer run, bytecode compiled once (level 0, as pip does).
        steps = [
            [python, "-m", "venv", "--clear", "--without-pip", venv],
            [os.path.join(venv, "bin", "python"), "-m", "installer",
             "--compile-bytecode", "0", *resolved],
        ]  # fmt: skip
        env = {"PYTHONPATH": installer[0]}
    else:
        steps = [[python, "-m", "venv", "--clear", venv], [*install, requirement]]
    for argv in steps:
        rc, out, err = module.run_command(argv, environ_update=env)
        if rc != 0:
            tail = " | ".join((out + err).strip().splitlines()[-8:])
            module.fail_json(
                msg=f"the virtualenv of {os.path.basename(release_dir)} could not be built "
                f"offline from its wheelhouse ({' '.join(argv[:4])} ...: rc {rc}): {tail}",
            )
    with open(os.path.join(venv, VENV_MARKER), "w", encoding="utf-8") as handle:
        seeded = (
            f" (the dependencies seeded from release {seed}'s, the same wheels)" if seed else ""
        )
        handle.write(f"{requirement} installed offline from {release_dir}/wheelhouse{seeded}\n")
    return seed


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "app_root": {"type": "str", "required": True},
            "release_id": {"type": "str", "required": True},
            "checksum": {"type": "str", "required": True},
            "src": {"type": "path"},
            "venv": {"type": "bool", "default": True},
            "python": {"type": "path", "default": "/usr/bin/python3"},
            "keep": {"type": "int", "default": 5},
            "configuration": {"type": "str", "default": "", "no_log": False},
        },
        supports_check_mode=True,
    )
    p = module.params
    root, release_id = p["app_root"], p["release_id"]
    releases = os.path.join(root, "releases")
    release_dir = os.path.join(releases, release_id)
    seconds: dict[str, float] = {}
    result = {
        "release_id": release_id,
        "release_dir": release_dir,
        "seconds": seconds,
        "configuration": "",
        "configured": False,
    }
    venv_ready = not p["venv"] or os.path.exists(os.path.join(release_dir, VENV, VENV_MARKER))
    if module.check_mode:
        module.exit_json(changed=not (os.path.isdir(release_dir) and venv_ready), **result)
    os.nice(19)
    changed = False
    for path, mode, owner, group in (
        (root, 0o755, "root", "root"),
        (os.path.join(root, "artifacts"), 0o750, "root", "root"),
        (releases, 0o755, "root", "root"),
        # The settings file's directory (the app role's shared/env, read by systemd as PID 1):
        # root's only, so the service account can neither read the file nor put another in its
        # place (a directory it could write would let it rename its own file over root's).
        (os.path.join(root, "shared"), 0o700, "root", "root"),
    ):
        changed |= ensure_dir(path, mode, owner, group)
    started = time.monotonic()
    unpacked = False
    if os.path.isdir(release_dir):
        # Every run, not only after unpacking: a file changed on the node since (by hand, by an
        # intruder) fails the deploy, naming the file.
        try:
            manifest, problems = verify_tree(release_dir, p["checksum"])
        except ReleaseProblem as error:
            manifest, problems = {}, [str(error)]
        seconds["verify"] = round(time.monotonic() - started, 2)
        if problems:
            module.fail_json(
                msg=f"release {release_id} does not match its manifest: {'; '.join(problems[:10])}. "
                f"Files of {release_dir} changed after it was unpacked: find out who changed them; "
                f"then remove that directory (if it is not the live one, see {root}/current) and "
                "deploy again to unpack it afresh.",
                **result,
            )
    else:
        if not p["src"]:
            module.exit_json(changed=changed, needs_artifact=True, **result)
        partial = os.path.join(releases, f".{release_id}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        os.mkdir(partial, 0o755)
        try:
            manifest = verify_artifact(p["src"], extract_to=partial)
        except ReleaseProblem as error:
            shutil.rmtree(partial, ignore_errors=True)
            module.fail_json(
                msg=f"the artifact of {release_id} was refused: {error}"
                + (f" ({error.hint})" if error.hint else ""),
                **result,
            )
        if (manifest["release_id"], manifest["checksum"]) != (release_id, p["checksum"]):
            shutil.rmtree(partial, ignore_errors=True)
            module.fail_json(
                msg=f"the uploaded artifact is {manifest['release_id']} "
                f"({manifest['checksum'][:12]}), not {release_id} ({p['checksum'][:12]})",
                **result,
            )
        kept = os.path.join(root, "artifacts", f"{release_id}.tar.gz")
        shutil.move(p["src"], kept)
        os.chmod(kept, 0o640)
        os.rename(partial, release_dir)
        seconds["unpack"] = round(time.monotonic() - started, 2)
        unpacked = changed = True
    venv_built = False
    if p["venv"] and not os.path.exists(os.path.join(release_dir, VENV, VENV_MARKER)):
        started = time.monotonic()
        result["venv_seed"] = build_venv(module, root, release_dir, p["python"], manifest)
        seconds["venv"] = round(time.monotonic() - started, 2)
        venv_built = changed = True
    changed |= stamp(release_dir)
    started = time.monotonic()
    try:
        pruned = prune(
            releases,
            p["keep"],
            os.path.join(root, "current"),
            # Nor a release a process still runs (an old release's worker finishing its jobs).
            [release_id, *sorted(running_releases())],
            os.path.join(root, "artifacts"),
            remove=lambda path: remove_later(module, path),
        )["removed"]
    except ReleaseProblem as error:
        module.fail_json(msg=str(error), **result)
    seconds["prune"] = round(time.monotonic() - started, 2)
    summary = {k: v for k, v in manifest.items() if k != "files"}
    module.exit_json(
        changed=changed or bool(pruned),
        manifest=summary,
        unpacked=unpacked,
        venv_built=venv_built,
        pruned=pruned,
        **{**result, **configuration(root, p["configuration"], manifest)},
    )


if __name__ == "__main__":
    main()
