"""The canary judged on live traffic (deploykit deploy --canary-soak), on the lab under load through
the balancer: a release whose health path passes but whose /products answers 500 is returned from
the canary after its soak found the 5xx rate, before any other clone is touched, and the only
failed requests are the canary's during the soak. (A canary that passes its soak, and the deploy
going on after it: test_rolling_deploys.py's rolled-back BAD release, whose canary is healthy.)
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, deploykit
from loadgen import LoadGenerator, SessionLogin

pytestmark = pytest.mark.e2e

CLONES = ("app1", "app2", "app3")
PRODUCTS = "    def list_products() -> Response:\n"
BROKEN = PRODUCTS + '        return _json({"error": "e2e: the canary cannot list products"}, 500)\n'
SOAK = 20


def run(*args: str) -> tuple[int, dict[str, Any], str]:
    """Exit code, the last JSON line (the summary), stderr."""
    proc = deploykit(*args, timeout=900)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc.returncode, (lines[-1] if lines else {}), proc.stderr


def build(app: Path, version: str, out: Path) -> dict[str, Any]:
    proc = deploykit(
        "build", "--app", str(app), "--version", version, "--out", str(out), "--json", timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    artifact: dict[str, Any] = json.loads(proc.stdout)
    return artifact


@pytest.fixture(scope="module")
def releases(shop: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The release live now, and one whose /products answers 500 (its health path passes)."""
    rc, status, stderr = run("status", "--json")
    assert rc == 0 and status["live"], stderr[-3000:]
    broken = tmp_path_factory.mktemp("broken") / "shop"
    shutil.copytree(
        ROOT / "examples" / "shop", broken,
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", ".*_cache"),
    )  # fmt: skip
    web = broken / "src" / "shop" / "web.py"
    text = web.read_text(encoding="utf-8")
    assert text.count(PRODUCTS) == 1, "update PRODUCTS: the shop's product list changed"
    web.write_text(text.replace(PRODUCTS, BROKEN), encoding="utf-8")
    version = f"3.0.0-soak{time.strftime('%H%M%S')}broken"
    return {
        "live": status["live"],
        "broken": build(broken, version, tmp_path_factory.mktemp("soak-artifacts")),
    }


@pytest.fixture
def load(shop: str) -> Iterator[LoadGenerator]:
    paths: list[str | tuple[str, float]] = [("/", 1), ("/products", 3), ("/me", 3), ("/healthz", 1)]
    generator = LoadGenerator(shop, paths=paths, concurrency=6, rate=60, session=SessionLogin())
    generator.start()
    try:
        yield generator
    finally:
        generator.stop()


def test_a_canary_answering_500_on_live_traffic_is_returned_after_its_soak(
    releases: dict[str, Any], load: LoadGenerator
) -> None:
    live, broken = releases["live"], releases["broken"]
    load.phase("deploy")
    rc, summary, stderr = run(
        "deploy", "--artifact", broken["path"], "--canary-soak", str(SOAK), "--json"
    )
    load.stop()
    assert rc == 1, (summary, stderr[-3000:])
    assert summary["outcome"] == "rolled_back", summary
    canary = summary["canary"]
    print(json.dumps(canary))
    # The soak measured the canary's 5xx rate against the old release's and ended at once.
    assert canary["verdict"] == "failed", canary
    assert canary["canary"]["error_rate"] > 2 and canary["old"]["error_rate"] == 0, canary
    assert canary["seconds"] < SOAK, canary
    assert "5xx on" in summary["failure"] and "app1" in summary["failure"], summary["failure"]
    nodes = summary["nodes"]
    assert (nodes["app1/app"]["outcome"], nodes["app1/app"]["step"]) == ("rolled_back", "soak")
    assert nodes["app2/app"]["outcome"] == nodes["app3/app"]["outcome"] == "untouched"
    rc, status, _ = run("status", "--json")
    clones = {n["host"]: n for n in status["nodes"] if n["role"] == "app"}
    assert {h: n["release"] for h, n in clones.items()} == dict.fromkeys(CLONES, live)
    assert {n["haproxy"] for n in clones.values()} == {"UP"}
    # The users who met the broken release are the canary's share during its soak, on /products.
    report = load.report()
    print(report.format_table())
    failed = [s for s in load.samples if s.failure is not None]
    assert failed, "no request reached the broken canary: the soak judged nothing"
    outside = [
        s.to_dict() for s in failed
        if not (s.status == 500 and s.path == "/products" and "from app1" in s.detail)
    ]  # fmt: skip
    assert outside == [], outside[:5]
