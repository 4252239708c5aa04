"""The haproxy role's runtime helper (roles/haproxy/files/deploykit-haproxy): how it reads a
`show stat` row's check columns. Rows here are as HAProxy 2.6.12 prints them (measured in the
haproxy molecule scenario); the helper against a real HAProxy is tested in tests/infra.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

HELPER = Path(__file__).resolve().parents[2] / "roles/haproxy/files/deploykit-haproxy"


@pytest.fixture(scope="module")
def helper() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("deploykit_haproxy", str(HELPER))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


def row(check_status: str, check_code: str = "", last_chk: str = "", desc: str = "") -> dict:
    return {
        "check_status": check_status,
        "check_code": check_code,
        "last_chk": last_chk,
        "check_desc": desc,
    }


def test_a_concluded_check_reports_its_reason_and_code(helper: ModuleType) -> None:
    failed = row("L7STS", "503", "Service Unavailable", "Layer7 wrong status")
    assert helper.check_result(failed) == (
        "L7STS",
        "Layer7 wrong status: Service Unavailable (code 503)",
    )
    assert not helper.check_in_progress(failed)


def test_a_check_in_progress_drops_the_code_haproxy_has_reset(helper: ModuleType) -> None:
    # While the next check runs, HAProxy shows "* " and a code of 0: not the last result's.
    running = row("* L7OK", "0", "", "Layer7 check passed")
    assert helper.check_in_progress(running)
    assert helper.check_result(running) == ("L7OK", "Layer7 check passed")


def test_paused_checks_report_nothing(helper: ModuleType) -> None:
    assert helper.check_result(row("")) == (None, None)


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (
            ["\toption httpchk", "\thttp-check send meth GET uri /livez ver HTTP/1.1 hdr Host x"],
            "/livez",
        ),
        (["\toption httpchk", "\thttp-check send meth GET uri /healthz"], "/healthz"),
        (["\toption httpchk GET /status"], "/status"),
        (["\toption httpchk"], None),
    ],
)
def test_the_path_haproxy_checks_the_app_servers_on_is_read_from_its_backend(
    helper: ModuleType, tmp_path: Path, lines: list[str], expected: str | None
) -> None:
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        "\n".join(
            ["backend static", "\thttp-check send meth GET uri /static-only",
             "backend app", *lines, "\tserver app1 10.0.0.1:8000",
             "backend other", "\thttp-check send meth GET uri /other"]
        ) + "\n",
        encoding="utf-8",
    )  # fmt: skip
    assert helper.check_path(str(config), "app") == expected
    assert helper.check_path(str(tmp_path / "missing.cfg"), "app") is None
