"""deploykit-pages (module_utils/pages.py): the names it accepts, the tar it receives from the bake
worker, the requests it answers, and the switch that makes pages live."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from ansible_collections.deploykit.fleet.plugins.module_utils import pages
from ansible_collections.deploykit.fleet.plugins.module_utils.release import STAMP


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
    with pytest.raises(pages.PagesProblem, match=r"stage b1: x\.html"):
        pages.receive(str(tmp_path), "stage b1", stream)
    assert os.listdir(tmp_path / "static" / "bakes") == []
    with pytest.raises(pages.PagesProblem, match="not staged"):
        pages.receive(str(tmp_path), "publish b1 3", io.BytesIO())


def test_stage_then_go_live_switches_once_and_prunes(tmp_path: Path) -> None:
    static = tmp_path / "static"
    paths_file, live_link = tmp_path / "baked-paths.lst", tmp_path / "live"
    reloads: list[str] = []
    for bake_id in ("b1", "b2", "b3"):
        stream = tar_of(("index.html", None, bake_id.encode()))
        assert pages.receive(str(tmp_path), f"stage {bake_id}", stream)["pages"] == 1

    def live(bake_id: str, keep: int) -> dict:
        return pages.go_live(
            str(static), "bakes", bake_id, ["/", "/index.html"], label=f"bake {bake_id}",
            keep=keep, paths_file=str(paths_file), live_link=str(live_link),
            reload=lambda: reloads.append(bake_id),
        )  # fmt: skip

    first = live("b2", keep=5)
    assert first["changed"] and first["list_changed"]
    assert (live_link / "index.html").read_bytes() == b"b2"
    assert os.readlink(static / "current") == "bakes/b2"
    assert paths_file.read_text().endswith("\n/\n/index.html\n")
    again = live("b2", keep=5)
    assert not again["changed"]
    third = live("b3", keep=1)
    assert (live_link / "index.html").read_bytes() == b"b3"
    assert sorted(third["pruned"]) == ["b1", "b2"]
    # The list names the bake, so each switch rewrote it and reloaded HAProxy once.
    assert reloads == ["b2", "b3"]
    assert json.loads((static / "bakes" / "b3" / STAMP).read_text())["release_id"] == "b3"
