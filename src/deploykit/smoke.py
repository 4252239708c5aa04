"""The smoke test `deploykit up` ends with: the stack answers through the balancer, runs the
release that was just deployed, and serves a baked page without the app."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message

from deploykit.errors import DeploykitError


@dataclass(frozen=True)
class Check:
    what: str
    detail: str


def _get(url: str, timeout: float = 5) -> tuple[int, Message, bytes]:
    """Status, headers (case-insensitive) and body of a GET; HTTP errors are answers too."""
    request = urllib.request.Request(url, headers={"User-Agent": "deploykit-smoke"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - http only
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def smoke_test(
    base_url: str, *, release_id: str, health_path: str, deadline: float = 60
) -> list[Check]:
    """Poll the health path through the balancer until it reports RELEASE_ID (bounded), then fetch
    the home page, which the balancer serves from the baked pages."""
    health_url = base_url.rstrip("/") + health_path
    stop = time.monotonic() + deadline
    last = "no answer"
    while True:
        try:
            status, headers, body = _get(health_url)
            reported = json.loads(body or b"{}").get("release") if status == 200 else None
            if reported == release_id:
                break
            last = f"HTTP {status}, release {reported!r}"
        except (OSError, ValueError) as error:
            last = str(error)
        if time.monotonic() > stop:
            raise DeploykitError(
                f"smoke test: {health_url} did not report release {release_id} within "
                f"{deadline:.0f} s (last: {last})",
                hint="deploykit lab status; journalctl -u <app>-web on an app host",
            )
        time.sleep(1)
    checks = [
        Check(
            "health", f"{health_url}: release {release_id}, clone {headers.get('X-Served-By', '?')}"
        )
    ]
    status, headers, _ = _get(base_url.rstrip("/") + "/")
    if status != 200:
        raise DeploykitError(f"smoke test: {base_url}/ answered HTTP {status}")
    checks.append(
        Check("home page", f"{base_url}/: HTTP 200 from {headers.get('X-Served-By', '?')}")
    )
    return checks
