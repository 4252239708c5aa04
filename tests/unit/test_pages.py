"""deploykit-pages (module_utils/pages.py): the names it accepts, the tar it receives from the bake
worker, the requests it answers, and the switch that makes pages live."""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.deploykit.fleet.plugins.module_utils import pages
from ansible_collections.deploykit.fleet.plugins.module_utils.release import STAMP

B1, B2, B3 = (f"20261204T03000{n}.000Z-r{n}" for n in (1, 2, 3))


def tar_of(*members: tuple[str, bytes | None, bytes]) -> io.BytesIO:
    """A tar stream of (name, type, data) members."""
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w") as archive:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.type = kind or tarfile.REGTYPE
            info.size = len(data) if info.type == tarfile.REGTYPE else 0
            if info.type in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = "/etc/shadow"
            archive.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)
    stream.seek(0)
    return stream


def test_baked_paths_route_each_page_and_each_index_directory() -> None:
    assert pages.baked_paths(["index.html", "catalogue/index.html", "about us.html"]) == [
        "/", "/about%20us.html", "/catalogue/", "/catalogue/index.html", "/index.html",
    ]  # fmt: skip


@pytest.mark.parametrize("name", ["index.html", "about us.html", "a/b/c.css", "~x+y.html"])
def test_plain_page_names_are_accepted(name: str) -> None:
    assert pages.check_page_name(name) == name


@pytest.mark.parametrize("name", ["../x.html", ".hidden", "a/.git/x", "a//b", "", "a/\nb", "/abs"])
def test_names_that_leave_or_hide_are_refused(name: str) -> None:
    with pytest.raises(pages.PagesProblem, match="not a page name"):
        pages.check_page_name(name)


def test_pages_in_lists_plain_files_and_skips_the_install_stamp(tmp_path: Path) -> None:
    (tmp_path / "catalogue").mkdir()
    (tmp_path / "catalogue" / "index.html").write_text("c")
    (tmp_path / "index.html").write_text("i")
    (tmp_path / STAMP).write_text("{}")
    assert pages.pages_in(str(tmp_path)) == ["catalogue/index.html", "index.html"]


def test_pages_in_refuses_links_and_nothing(tmp_path: Path) -> None:
    with pytest.raises(pages.PagesProblem, match="no page at all"):
        pages.pages_in(str(tmp_path))
    (tmp_path / "index.html").symlink_to("/etc/hostname")
    with pytest.raises(pages.PagesProblem, match="symbolic link"):
        pages.pages_in(str(tmp_path))


def test_receive_tar_writes_plain_files_root_would_serve(tmp_path: Path) -> None:
    stream = tar_of(("catalogue", tarfile.DIRTYPE, b""), ("catalogue/index.html", None, b"<p>c"))
    assert pages.receive_tar(stream, str(tmp_path / "out")) == 1
    page = tmp_path / "out" / "catalogue" / "index.html"
    assert page.read_bytes() == b"<p>c"
    assert page.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    ("name", "kind", "why"),
    [
        ("../escaped.html", None, "not a page name"),
        ("link.html", tarfile.SYMTYPE, "not a regular file"),
        ("hard.html", tarfile.LNKTYPE, "not a regular file"),
        ("dev", tarfile.CHRTYPE, "not a regular file"),
        (".htaccess", None, "not a page name"),
    ],
)
def test_receive_tar_refuses_what_is_not_a_plain_page(
    tmp_path: Path, name: str, kind: bytes | None, why: str
) -> None:
    with pytest.raises(pages.PagesProblem, match=why):
        pages.receive_tar(
            tar_of(("index.html", None, b"i"), (name, kind, b"")), str(tmp_path / "o")
        )
    assert not (tmp_path / "escaped.html").exists()


@pytest.mark.parametrize(
    "request_", ["cat /etc/shadow", "", "stage", "stage ../x", "publish b1 many", "stage a b"]
)
def test_receive_answers_only_stage_and_publish(tmp_path: Path, request_: str) -> None:
    with pytest.raises(pages.PagesProblem, match="not a request"):
        pages.receive(str(tmp_path), request_, io.BytesIO())
    assert not (tmp_path / "static").exists()


def test_a_refused_stage_leaves_nothing_behind(tmp_path: Path) -> None:
    stream = tar_of(("index.html", None, b"i"), ("x.html", tarfile.SYMTYPE, b""))
    with pytest.raises(pages.PagesProblem, match=rf"stage {B1}: x\.html"):
        pages.receive(str(tmp_path), f"stage {B1}", stream)
    assert os.listdir(tmp_path / "static" / "bakes") == []
    with pytest.raises(pages.PagesProblem, match="not staged"):
        pages.receive(str(tmp_path), f"publish {B1} 3", io.BytesIO())


def test_stage_then_go_live_switches_once_and_prunes(tmp_path: Path) -> None:
    static = tmp_path / "static"
    paths_file, live_link = tmp_path / "baked-paths.lst", tmp_path / "live"
    reloads: list[str] = []
    for bake_id in (B1, B2, B3):
        stream = tar_of(("index.html", None, bake_id.encode()))
        assert pages.receive(str(tmp_path), f"stage {bake_id}", stream)["pages"] == 1

    def live(bake_id: str, keep: int) -> dict:
        return pages.go_live(
            str(static), "bakes", bake_id, ["/", "/index.html"], label="site",
            keep=keep, paths_file=str(paths_file), live_link=str(live_link),
            reload=lambda: reloads.append(bake_id),
        )  # fmt: skip

    first = live(B2, keep=5)
    assert first["changed"] and first["list_changed"]
    assert (live_link / "index.html").read_bytes() == B2.encode()
    assert os.readlink(static / "current") == f"bakes/{B2}"
    assert pages.served_pages(str(tmp_path)) == ("r2", B2)
    assert paths_file.read_text().endswith("\n/\n/index.html\n")
    again = live(B2, keep=5)
    assert not again["changed"]
    third = live(B3, keep=1)
    assert (live_link / "index.html").read_bytes() == B3.encode()
    assert sorted(third["pruned"]) == [B1, B2]
    # The paths did not change from one bake to the next: HAProxy was reloaded once, for the first.
    assert reloads == [B2]
    assert not third["list_changed"]
    assert json.loads((static / "bakes" / B3 / STAMP).read_text())["release_id"] == B3


# -- the bake worker's run: a fake helper runs the bake here; a fake ssh hands each request to
# -- receive() for a balancer directory (the real ones are the e2e test's, on the lab) --------

BAKE_MODULE = """\
import os
import sys
def bake(out_dir):
    if os.environ.get("BAKE_FAILS"):
        raise RuntimeError("the document store is down")
    (out_dir / "index.html").write_text(os.environ["DEPLOYKIT_BAKE"] + " " + os.environ["PAGE"])
"""


@pytest.fixture
def bake_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """An app root whose live release bakes (bakemod:bake), a helper that runs it with this
    Python, and two balancers: directories that receive() serves."""
    release = tmp_path / "app" / "releases" / "r1"
    release.mkdir(parents=True)
    (tmp_path / "app" / "current").symlink_to("releases/r1")
    (tmp_path / "app" / "bakes").mkdir()
    files: dict[str, str] = {}
    manifest = {
        "name": "site",
        "release_id": "r1",
        "files": files,
        "contract": {"bake": "bakemod:bake"},
    }
    (release / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "bakemod.py").write_text(BAKE_MODULE)
    helper = tmp_path / "helper"
    # deploykit-release exec APP_ROOT python ARGS...: python ARGS with the bake module importable.
    helper.write_text(
        f'#!/bin/sh\nshift 3\nPYTHONPATH={tmp_path / "lib"} exec {sys.executable} "$@"\n'
    )
    helper.chmod(0o755)
    monkeypatch.setattr(pages, "HELPER", str(helper))
    monkeypatch.setenv("PAGE", "v1")
    refused: set[str] = set()

    def fake_ssh(self: pages.Bakery, host: str, request: str, tar_of: str | None) -> str:
        if host in refused:
            raise pages.PagesProblem(f"{host}: {request.split(maxsplit=1)[0]}: connection refused")
        stream = io.BytesIO()
        if tar_of is not None:
            pages.write_tar(tar_of, stream)
        root = tmp_path / host
        root.mkdir(exist_ok=True)
        live = {
            "paths_file": str(root / "paths.lst"),
            "live_link": str(root / "live"),
            "reload": None,
        }
        return json.dumps(pages.receive(str(root), request, stream, **live))

    monkeypatch.setattr(pages.Bakery, "ssh", fake_ssh)
    config = {"balancers": ["lb1", "lb2"], "identity": "k", "known_hosts": "kh", "keep": 2}
    return {"root": tmp_path, "config": config, "refused": refused}


def served(site: dict[str, Any], host: str) -> str:
    return (site["root"] / host / "live" / "index.html").read_text()


def test_a_bake_goes_live_on_every_balancer(bake_site: dict[str, Any]) -> None:
    app = str(bake_site["root"] / "app")
    assert pages.Bakery(app, bake_site["config"]).run() == 0
    record = pages.read_record(app)
    assert record is not None
    assert record["outcome"] == "published", record
    assert record["balancers"] == {"lb1": "published", "lb2": "published"}
    assert record["paths"] == ["/", "/index.html"]
    assert served(bake_site, "lb1") == served(bake_site, "lb2") == "live v1"


def test_a_balancer_that_fails_leaves_every_balancer_as_it_was(
    bake_site: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = str(bake_site["root"] / "app")
    assert pages.Bakery(app, bake_site["config"]).run() == 0
    monkeypatch.setenv("PAGE", "v2")
    bake_site["refused"].add("lb2")
    assert pages.Bakery(app, bake_site["config"]).run() == 1
    record = pages.read_record(app)
    assert record is not None
    assert record["outcome"] == "failed"
    assert "lb2: stage: connection refused" in record["reason"], record
    assert record["balancers"]["lb1"] == "staged"  # staged, never switched
    assert served(bake_site, "lb1") == served(bake_site, "lb2") == "live v1"


def test_a_failed_bake_publishes_nothing_and_says_why(
    bake_site: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = str(bake_site["root"] / "app")
    monkeypatch.setenv("BAKE_FAILS", "1")
    assert pages.Bakery(app, bake_site["config"]).run() == 1
    record = pages.read_record(app)
    assert record is not None
    assert "bakemod:bake failed (exit 1)" in record["reason"], record
    assert "the document store is down" in record["reason"], record
    assert set(record["balancers"].values()) == {"not contacted"}
    assert [p.name for p in (bake_site["root"] / "app" / "bakes").iterdir()] == ["last.json"]


def test_the_purge_hook_runs_after_the_publish_with_what_changed(
    bake_site: dict[str, Any], tmp_path: Path
) -> None:
    app = str(bake_site["root"] / "app")
    told = tmp_path / "purged"
    command = f'echo "$DEPLOYKIT_BAKE_ID|$DEPLOYKIT_BAKE_PATHS|$DEPLOYKIT_BALANCERS" > {told}'
    config = {**bake_site["config"], "purge_command": ["sh", "-c", command]}
    assert pages.Bakery(app, config).run() == 0
    record = pages.read_record(app)
    assert record is not None
    bake_id, paths, balancers = told.read_text().strip().split("|")
    assert (bake_id, paths, balancers) == (record["bake_id"], "/ /index.html", "lb1 lb2")
    assert record["purge"] == "done"

    failing = {**bake_site["config"], "purge_command": ["sh", "-c", "echo no CDN >&2; exit 3"]}
    assert pages.Bakery(app, failing).run() == 1
    record = pages.read_record(app)
    assert record is not None
    assert record["outcome"] == "published"  # the pages are live; the purge is what failed
    assert record["purge"] == "failed: exit 3: no CDN", record


def test_a_release_that_bakes_nothing_is_not_a_failure(bake_site: dict[str, Any]) -> None:
    app = bake_site["root"] / "app"
    manifest_path = app / "releases" / "r1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["contract"] = {}
    manifest_path.write_text(json.dumps(manifest))
    assert pages.Bakery(str(app), bake_site["config"]).run() == 0
    assert (pages.read_record(str(app)) or {})["outcome"] == "nothing to bake"
