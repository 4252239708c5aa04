"""The entry points as deploykit runs them: gunicorn serving `shop.web:app`, and a Celery worker
(`celery -A shop.jobs:celery_app worker`) whose process dies in the middle of a job."""

from __future__ import annotations

import http.cookiejar
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from shop.catalogue import COLLECTIONS, JOBS, seed
from shop.docstore import DocumentStore, open_store
from shop.jobs import job_queue
from shop.settings import Settings
from shop.web import create_app
from shop_test_support import closed_port, unavailable


@pytest.fixture
def pg_store(postgres_url: str) -> Iterator[DocumentStore]:
    store = open_store("postgresql", postgres_url)
    store.ensure_collections(COLLECTIONS)
    seed(store)
    yield store
    store.close()


def wait_until(what: str, check: Callable[[], Any], seconds: float) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {seconds} s")


def stop(process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # gunicorn: graceful stop; celery: warm shutdown
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_gunicorn_serves_the_app(
    redis_url: str, postgres_url: str, pg_store: DocumentStore, tmp_path: Path
) -> None:
    port = closed_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "SECRET_KEY": "gunicorn-test-secret",
        "REDIS_URL": redis_url,
        "BROKER_URL": "memory://",
        "DOCSTORE_ENGINE": "postgresql",
        "DOCSTORE_URL": postgres_url,
        "DEPLOYKIT_RELEASE_ID": "gunicorn-release",
    }
    log = (tmp_path / "gunicorn.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "2",
         "--threads", "2", "--worker-class", "gthread", "shop.web:app"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:

        def healthz() -> dict[str, Any] | None:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=2) as response:  # noqa: S310
                    body: dict[str, Any] = json.load(response)
                    return body
            except (urllib.error.URLError, ConnectionError):
                return None

        health = wait_until("gunicorn answering /healthz", healthz, 20)
        assert health["release"] == "gunicorn-release"
        assert health["checks"]["docstore"] == "ok"

        # Log in once, then ask many times: both worker processes (two clones) know the user.
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        request = urllib.request.Request(  # noqa: S310 - http://127.0.0.1 built above
            f"{base}/login", data=b'{"user": "gus"}', headers={"Content-Type": "application/json"}
        )
        with opener.open(request, timeout=5) as response:
            assert response.status == 200
        pids = set()
        for _ in range(30):
            with opener.open(f"{base}/me", timeout=5) as response:
                me = json.load(response)
            assert me["user"] == "gus"
            pids.add(me["pid"])
        assert len(pids) >= 1
    finally:
        stop(server)
        log.close()
    assert server.returncode == 0, (tmp_path / "gunicorn.log").read_text()[-3000:]


def _worker_broker(redis_url: str) -> str:
    """BROKER_URL if set (a real RabbitMQ), else Redis database 15 as a stand-in broker."""
    if os.environ.get("BROKER_URL"):
        return os.environ["BROKER_URL"]
    parts = urlsplit(redis_url)
    return urlunsplit((parts.scheme, parts.netloc, "/15", "", ""))


def test_job_survives_the_death_of_its_worker(
    redis_url: str, postgres_url: str, pg_store: DocumentStore, tmp_path: Path
) -> None:
    broker = _worker_broker(redis_url)
    settings = Settings(
        secret_key=secrets.token_urlsafe(16),
        redis_url=redis_url,
        broker_url=broker,
        docstore_engine="postgresql",
        docstore_url=postgres_url,
        release_id="worker-release",
        report_seconds=3.0,
    )
    app = create_app(settings)
    celery = app.extensions["shop"].celery
    try:
        with celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=0)
            conn.SimpleQueue(job_queue()).clear()  # nothing left over from an earlier run
    except Exception as exc:
        unavailable("the Celery broker (Redis)", f"not reachable at {broker}: {exc}")

    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "BROKER_URL": broker,
        "DOCSTORE_ENGINE": "postgresql",
        "DOCSTORE_URL": postgres_url,
        "DEPLOYKIT_RELEASE_ID": "worker-release",
    }
    log_path = tmp_path / "worker.log"
    log = log_path.open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "shop.jobs:celery_app", "worker",
         "--concurrency=1", "--loglevel=INFO", "--without-gossip", "--without-mingle",
         "--without-heartbeat", "-n", f"shop-test-{os.getpid()}@%h"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        response = app.test_client().post("/reports")
        assert response.status_code == 202
        assert response.json is not None
        job_id = response.json["job_id"]

        def job() -> dict[str, Any]:
            found = pg_store.get(JOBS, job_id)
            assert found is not None
            return found

        running = wait_until("the job running", lambda: job()["status"] == "running", 30)
        assert running
        victim = job()["pid"]
        os.kill(victim, signal.SIGKILL)  # the worker process dies mid-job

        done = wait_until("the job done after redelivery", lambda: job()["status"] == "done", 40)
        assert done
        final = job()
        assert final["attempts"] == 2
        assert final["pid"] != victim
        assert final["release"] == "worker-release"
        assert final["result"]["products"] >= 12

        # The redelivered job is not redone once done (idempotent): the task returns False.
        task = celery.tasks["shop.generate_report"]
        assert task.run(job_id, 0) is False
        assert job() == final
    finally:
        stop(worker)
        log.close()
        app.extensions["shop"].store.close()
    assert "WorkerLostError" in log_path.read_text() or "lost" in log_path.read_text().lower()
