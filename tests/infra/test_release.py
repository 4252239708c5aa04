"""Testinfra checks of the release role, run by the molecule scenario ``release``.

One node, ``release-node``, on which converge.yml staged two releases of the minimal application
(A, 0.1.0, live; B, 0.2.0, staged) with the release role. The node-side helper
(/usr/local/libexec/deploykit-release) is exercised on scratch copies: verify (a changed, added or
missing file, an edited manifest), prune (the newest N and never the live one), exec (the release
id from the link) and running.
"""

from __future__ import annotations

import json

import pytest
from lab_probes import installed_distributions, only_in_scenario, scenario_host

SCENARIO = "release"

pytestmark = only_in_scenario(SCENARIO)

NODE = "release-node"
ROOT = "/srv/minimal"
HELPER = "/usr/local/libexec/deploykit-release"
SCRATCH = "/root/release-scratch"


@pytest.fixture(scope="module")
def node(request):
    return scenario_host(request, NODE)


@pytest.fixture(scope="module")
def releases(node) -> dict[str, str]:
    """{'A': live release id, 'B': the other one}, read from the node."""
    live = node.file(f"{ROOT}/current").linked_to.rsplit("/", 1)[1]
    names = node.run("ls -1 %s/releases", ROOT).stdout.split()
    others = [name for name in names if name != live]
    assert len(others) == 1, names
    return {"A": live, "B": others[0]}


@pytest.fixture
def scratch(node):
    node.run("rm -rf %s && mkdir -p %s", SCRATCH, SCRATCH)
    yield SCRATCH
    node.run("rm -rf %s", SCRATCH)


def manifest(node, release: str) -> dict:
    return json.loads(node.file(f"{ROOT}/releases/{release}/manifest.json").content_string)


# --- the layout --------------------------------------------------------------------------------


def test_release_ids(releases):
    assert releases["A"].startswith("0.1.0-")
    assert releases["B"].startswith("0.2.0-")


def test_layout(node, releases):
    root = node.file(ROOT)
    assert root.is_directory and root.user == "root" and root.mode == 0o755
    shared = node.file(f"{ROOT}/shared")
    assert shared.is_directory
    # Root's only: the settings file the app role writes there is read by systemd (PID 1); the
    # service account can neither read it nor put another file in its place.
    assert (shared.user, shared.group, shared.mode) == ("root", "root", 0o700)
    assert node.run("runuser -u deploykit -- touch %s/shared/planted", ROOT).rc != 0
    artifacts = node.file(f"{ROOT}/artifacts")
    assert (artifacts.user, artifacts.mode) == ("root", 0o750)
    for release in releases.values():
        directory = node.file(f"{ROOT}/releases/{release}")
        assert directory.is_directory and directory.user == "root" and directory.mode == 0o755
        artifact = node.file(f"{ROOT}/artifacts/{release}.tar.gz")
        assert artifact.is_file and artifact.mode == 0o640
        for part in ("manifest.json", "source", "wheelhouse", "baked", ".deploykit-release.json"):
            assert node.file(f"{directory.path}/{part}").exists, part
    # Nothing half-done is left behind.
    assert node.run("ls -A %s/releases", ROOT).stdout.split() == sorted(releases.values())
    assert not node.file(f"{ROOT}/.current.switching").exists


def test_current_is_a_relative_link_to_the_live_release(node, releases):
    current = node.file(f"{ROOT}/current")
    assert current.is_symlink
    assert node.run("readlink %s/current", ROOT).stdout.strip() == f"releases/{releases['A']}"


def test_release_files_are_not_writable_by_the_service_account(node, releases):
    release = f"{ROOT}/releases/{releases['A']}"
    for path in ("source/x", "venv/lib/x", "x"):
        attempt = node.run("runuser -u deploykit -- touch %s/%s", release, path)
        assert attempt.rc != 0, path
    assert node.run("runuser -u deploykit -- cat %s/source/pyproject.toml", release).rc == 0


def test_every_file_matches_the_manifest(node, releases):
    for release in releases.values():
        result = node.run("%s verify %s/releases/%s", HELPER, ROOT, release)
        assert result.rc == 0, result.stderr
        summary = json.loads(result.stdout)
        assert summary["release_id"] == release
        assert summary["files"] == len(manifest(node, release)["files"])


# --- the virtualenv ---------------------------------------------------------------------------


def test_virtualenv_built_offline_from_the_wheelhouse(node, releases):
    seeded = []
    for release in releases.values():
        venv = f"{ROOT}/releases/{release}/venv"
        marker = node.file(f"{venv}/.deploykit-complete")
        assert marker.is_file
        assert "installed offline" in marker.content_string
        # The installed distributions are exactly the wheels of the release's wheelhouse: no
        # pip, no setuptools (installer built it; the release's runtime has no installer).
        installed = installed_distributions(node, venv)
        wheels = {
            name.split("-")[0].lower().replace("_", "-"): name.split("-")[1]
            for name in node.run("ls -1 %s/releases/%s/wheelhouse", ROOT, release).stdout.split()
        }
        # The build ships pypa/installer in the wheelhouse for the stage (below); it is a tool of
        # the node's install, not a package of the release.
        assert wheels.pop("installer", None) is not None, wheels
        assert installed == wheels
        if "seeded from release" in marker.content_string:
            # A seeded virtualenv got the application's own wheel from installer, not pip (which
            # marks what it installs with INSTALLER: pip).
            app = manifest(node, release)["project"].lower().replace("-", "_")
            site = f"{venv}/lib/python3.11/site-packages"
            record = node.run("cat %s/%s-*.dist-info/INSTALLER", site, app)
            assert record.rc != 0 and "pip" not in record.stdout, record.stdout
            seeded.append(release)
        assert not node.file(f"{venv}/bin/pip").exists
        assert node.file(f"{venv}/bin/gunicorn").is_file
    # The second release has the first one's dependencies: its virtualenv is the first's, seeded.
    assert len(seeded) == 1, seeded


def test_virtualenv_runs_the_application(node, releases):
    venv = f"{ROOT}/releases/{releases['A']}/venv"
    result = node.run(
        "%s/bin/python -c 'import minimal.web, gunicorn; print(minimal.web.HEALTH_PATH)'", venv
    )
    assert result.rc == 0, result.stderr
    assert result.stdout.strip() == "/healthz"


# --- verify, on a copy ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            "echo '# changed' >> {d}/source/src/minimal/web.py",
            "source/src/minimal/web.py: sha256 differs from manifest.json",
        ),
        (
            "echo x > {d}/source/src/minimal/extra.py",
            "source/src/minimal/extra.py: not in manifest.json (added after the build)",
        ),
        ("rm {d}/baked/index.html", "baked/index.html: missing (listed in manifest.json)"),
        (
            'sed -i \'s/"baked\\/index.html": "/&0/\' {d}/manifest.json',
            "manifest.json: its checksum does not match its files list",
        ),
        ("ln -s /etc/passwd {d}/source/link", "source/link: not in manifest.json"),
    ],
    ids=["changed", "added", "missing", "manifest-edited", "symlink-added"],
)
def test_verify_names_what_differs(node, releases, scratch, change, message):
    copy = f"{scratch}/{releases['A']}"
    assert node.run("cp -a %s/releases/%s %s", ROOT, releases["A"], copy).rc == 0
    assert node.run("%s verify %s", HELPER, copy).rc == 0
    assert node.run(change.format(d=copy)).rc == 0
    result = node.run("%s verify %s", HELPER, copy)
    assert result.rc == 1
    assert f"{copy}/{message}" in result.stderr, result.stderr


def test_verify_refuses_another_build_of_the_release(node, releases):
    result = node.run(
        "%s verify %s/releases/%s --checksum=%s", HELPER, ROOT, releases["A"], "0" * 64
    )
    assert result.rc == 1
    assert "is not the artifact's" in result.stderr


# --- prune ---------------------------------------------------------------------------------------


def make_release(node, releases_dir: str, name: str, installed_at: float | None) -> None:
    node.run("mkdir -p %s/%s/venv", releases_dir, name)
    if installed_at is not None:
        stamp = json.dumps({"release_id": name, "installed_at": installed_at})
        node.run("echo %s > %s/%s/.deploykit-release.json", stamp, releases_dir, name)


def test_prune_keeps_the_newest_and_never_the_live_one(node, scratch):
    releases_dir, artifacts = f"{scratch}/releases", f"{scratch}/artifacts"
    node.run("mkdir -p %s %s", releases_dir, artifacts)
    # Installed in this order: r-old (live), r-2, r-3, r-4; r-broken never completed (no stamp).
    for name, when in [("r-old", 100.0), ("r-2", 200.0), ("r-3", 300.0), ("r-4", 400.0)]:
        make_release(node, releases_dir, name, when)
        node.run("touch %s/%s.tar.gz", artifacts, name)
    make_release(node, releases_dir, "r-broken", None)
    # Modification times say the opposite of the stamps: they must not matter.
    node.run("touch -d '2001-01-01' %s/r-4 %s/r-3", releases_dir, releases_dir)
    node.run("ln -s releases/r-old %s/current", scratch)
    result = node.run(
        "%s prune %s --keep 2 --current %s/current --artifacts %s",
        HELPER,
        releases_dir,
        scratch,
        artifacts,
    )
    assert result.rc == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["live"] == "r-old"
    assert sorted(outcome["removed"]) == ["r-2", "r-broken"]
    assert sorted(node.run("ls -1 %s", releases_dir).stdout.split()) == ["r-3", "r-4", "r-old"]
    assert sorted(node.run("ls -1 %s", artifacts).stdout.split()) == [
        "r-3.tar.gz",
        "r-4.tar.gz",
        "r-old.tar.gz",
    ]
    # Again: nothing more to remove.
    again = json.loads(
        node.run("%s prune %s --keep 2 --current %s/current", HELPER, releases_dir, scratch).stdout
    )
    assert again["removed"] == []


def test_prune_keeps_a_protected_release(node, scratch):
    releases_dir = f"{scratch}/releases"
    for name, when in [("r-1", 1.0), ("r-2", 2.0), ("r-3", 3.0)]:
        make_release(node, releases_dir, name, when)
    result = node.run("%s prune %s --keep 1 --protect r-1", HELPER, releases_dir)
    assert json.loads(result.stdout)["removed"] == ["r-2"]


# --- exec and running ---------------------------------------------------------------------------


def test_exec_runs_the_linked_release_with_its_id(node, releases, scratch):
    # A scratch application root whose current points to a copy of release A's directory layout
    # with a program that prints its environment and working directory.
    release = f"{scratch}/releases/9.9.9-abc"
    node.run("mkdir -p %s/venv/bin", release)
    node.run(
        "printf '#!/bin/sh\\necho \"$DEPLOYKIT_RELEASE_ID $(pwd) $*\"\\n' > %s/venv/bin/probe"
        " && chmod 0755 %s/venv/bin/probe",
        release,
        release,
    )
    missing = node.run("%s exec %s probe", HELPER, scratch)
    assert missing.rc == 78
    assert "does not point to a release" in missing.stderr
    node.run("ln -sfn releases/9.9.9-abc %s/current", scratch)
    result = node.run("%s exec %s probe --flag value", HELPER, scratch)
    assert result.rc == 0, result.stderr
    assert result.stdout.strip() == f"9.9.9-abc {release} --flag value"
    absent = node.run("%s exec %s no-such-program", HELPER, scratch)
    assert absent.rc == 78
    # @wsgi@ and @worker@ are the linked release's contract entries, from its manifest.
    contract = json.dumps({"files": {}, "contract": {"wsgi": "pkg.web:app", "worker": None}})
    node.run("echo %s > %s/manifest.json", contract, release)
    wsgi = node.run("%s exec %s probe --bind x @wsgi@", HELPER, scratch)
    assert wsgi.stdout.strip() == f"9.9.9-abc {release} --bind x pkg.web:app", wsgi.stderr
    worker = node.run("%s exec %s probe -A @worker@", HELPER, scratch)
    assert worker.rc == 78
    assert "declares no worker" in worker.stderr
    # --release (a unit per release passes its instance): that release, whatever current says.
    node.run("rm %s/current", scratch)
    named = node.run("%s exec --release 9.9.9-abc %s probe --flag", HELPER, scratch)
    assert named.stdout.strip() == f"9.9.9-abc {release} --flag", named.stderr
    unknown = node.run("%s exec --release 9.9.8-abc %s probe", HELPER, scratch)
    assert unknown.rc == 78
    assert "is not staged" in unknown.stderr
    outside = node.run("%s exec --release .. %s probe", HELPER, scratch)
    assert outside.rc == 78, outside.stdout


def test_running_of_a_stopped_unit(node):
    result = node.run("%s running no-such.service --file /etc/hostname", HELPER)
    assert result.rc == 0, result.stderr
    assert json.loads(result.stdout) == {"pid": 0, "release": None, "changed_since": []}
