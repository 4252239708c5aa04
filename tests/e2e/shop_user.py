"""A shop user's browser for the e2e tests (its own cookies, straight to the balancer), and the
session and job helpers that test_faults.py and test_ha.py share."""

from __future__ import annotations

import http.cookiejar
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from typing import Any

import pytest


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Message
    body: bytes
    seconds: float

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def is_json(self) -> bool:
        return self.headers.get_content_type() == "application/json"

    def __str__(self) -> str:
        text = self.body[:300].decode(errors="replace").strip()
        kind = self.headers.get_content_type()
        return f"HTTP {self.status} in {self.seconds:.2f} s ({kind}): {text}"


class User:
    """One browser: its own cookies, straight to the balancer (no proxy from the environment)."""

    def __init__(self, base_url: str, name: str) -> None:
        self.base_url = base_url
        self.name = name
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}),
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()),
        )

    def request(
        self, method: str, path: str, payload: Any = None, *, timeout: float = 15.0
    ) -> Answer:
        """The answer, whatever its status; fails the test when none comes within `timeout`."""
        data = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        request = urllib.request.Request(
            self.base_url + path, data=data, method=method, headers=headers
        )
        started = time.monotonic()
        try:
            with self._opener.open(request, timeout=timeout) as answer:
                body, status, got = answer.read(), answer.status, answer.headers
        except urllib.error.HTTPError as error:
            body, status, got = error.read(), error.code, error.headers
        except (OSError, urllib.error.URLError) as error:  # a timeout, a reset: no answer at all
            pytest.fail(
                f"{method} {path}: no answer after {time.monotonic() - started:.1f} s "
                f"(limit {timeout:g} s): {error}"
            )
        return Answer(status, got, body, time.monotonic() - started)

    def get(self, path: str, *, timeout: float = 15.0) -> Answer:
        return self.request("GET", path, timeout=timeout)

    def post(self, path: str, payload: Any = None, *, timeout: float = 15.0) -> Answer:
        return self.request("POST", path, {} if payload is None else payload, timeout=timeout)

    def login(self) -> User:
        answer = self.post("/login", {"user": self.name})
        assert answer.status == 200 and answer.json()["user"] == self.name, str(answer)
        return self

    def me(self) -> Answer:
        return self.get("/me")


def logged_in(base_url: str, prefix: str, count: int) -> list[User]:
    # A fresh suffix per run: the users of one run are not those of an earlier one.
    run = uuid.uuid4().hex[:6]
    return [User(base_url, f"{prefix}-{run}-{i}").login() for i in range(count)]


def assert_sessions_valid(users: list[User], *, within: float = 20.0) -> None:
    """Every user is still logged in as themself: GET /me answers 200 with their name. A 503 (the
    session store not answering yet) is waited out, up to `within` seconds; a 401 is a lost
    session and fails at once."""
    deadline = time.monotonic() + within
    for user in users:
        while True:
            answer = user.me()
            if answer.status != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert answer.status != 503, f"{user.name}: still 503 after {within:g} s: {answer}"
        assert answer.status == 200, f"{user.name}: the session was lost: {answer}"
        assert answer.json()["user"] == user.name, str(answer)


def wait_until(
    what: str, check: Callable[[], bool], *, timeout: float, every: float = 0.5
) -> float:
    """Poll `check` until it is true; the seconds it took. Fails the test after `timeout`."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            pytest.fail(f"{what}: not after {timeout:g} s")
        time.sleep(every)
    return time.monotonic() - started


# --- reports (jobs through the queue) -------------------------------------------------------------


def submit_reports(user: User, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        answer = user.post("/reports")
        assert answer.status == 202, str(answer)
        ids.append(str(answer.json()["job_id"]))
    return ids


def jobs(user: User, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Each job's document as GET /reports/<id> shows it."""
    found = {}
    for job_id in ids:
        answer = user.get(f"/reports/{job_id}")
        assert answer.status in (200, 202), str(answer)
        found[job_id] = answer.json()
    return found


def wait_done(user: User, ids: list[str], *, timeout: float) -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}

    def all_done() -> bool:
        nonlocal docs
        docs = jobs(user, ids)
        return all(doc["status"] == "done" for doc in docs.values())

    try:
        wait_until(f"{len(ids)} report jobs done", all_done, timeout=timeout)
    except pytest.fail.Exception:
        statuses = {job_id: (d["status"], d.get("attempts")) for job_id, d in docs.items()}
        pytest.fail(f"not every job is done after {timeout:g} s: {statuses}")
    return docs
