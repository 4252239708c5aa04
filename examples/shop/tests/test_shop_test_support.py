"""How a missing service ends its tests: one path for every service (unavailable())."""

from __future__ import annotations

import pytest
import shop_test_support
from shop_test_support import NOT_PROVIDED, unavailable


@pytest.fixture(params=[False, True], ids=["local", "ci"])
def require(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    monkeypatch.setattr(shop_test_support, "REQUIRE_SERVICES", request.param)
    return bool(request.param)


def outcome(service: str, problem: str, *, url_given: bool = True) -> tuple[str, str]:
    try:
        unavailable(service, problem, url_given=url_given)
    except pytest.skip.Exception as skipped:
        return "skipped", str(skipped)
    except pytest.fail.Exception as failed:
        return "failed", str(failed)
    raise AssertionError("unavailable() returned")


def test_a_missing_service_skips_locally_and_fails_in_ci(require: bool) -> None:
    kind, message = outcome("Redis", "not reachable at redis://127.0.0.1:1/0: refused")
    assert kind == ("failed" if require else "skipped")
    assert message.startswith("Redis: not reachable at redis://127.0.0.1:1/0: refused")


def test_a_service_not_provided_here_skips_with_its_reason_even_in_ci(require: bool) -> None:
    kind, message = outcome("MongoDB", "MONGODB_URL is not set", url_given=False)
    assert kind == "skipped"
    assert (
        message == f"MongoDB: MONGODB_URL is not set; not provided here: {NOT_PROVIDED['MongoDB']}"
    )


def test_a_url_given_that_does_not_answer_fails_in_ci_even_for_those(require: bool) -> None:
    kind, _ = outcome("MongoDB", "not reachable at MONGODB_URL=mongodb://127.0.0.1:1/app")
    assert kind == ("failed" if require else "skipped")


def test_the_list_of_services_not_provided_stays_short_and_reasoned() -> None:
    assert list(NOT_PROVIDED) == ["MongoDB"]
    assert all(len(reason.split()) > 10 for reason in NOT_PROVIDED.values())
