"""The domain: product documents checked on the way in, the report's figures."""

from __future__ import annotations

from typing import Any

import pytest
from shop.catalogue import (
    ProductError,
    assemble_product,
    catalogue_report,
    check_product,
    load_seed,
    price_text,
)


def test_check_product() -> None:
    full = {"name": "Tea", "category": "tea", "price_cents": 100, "stock": 2, "tags": ["a"]}
    assert check_product(full, partial=False) == full
    assert check_product({"stock": 5}, partial=True) == {"stock": 5}
    bad: list[Any] = [
        ["not", "an", "object"],
        {"name": "Tea", "category": "tea"},
        {"name": "", "category": "tea", "price_cents": 1},
        {"name": "Tea", "category": "tea", "price_cents": True},
        {"name": "Tea", "category": "tea", "price_cents": 1.5},
        {"name": "Tea", "category": "tea", "price_cents": 1, "tags": [""]},
        {"name": "Tea", "category": "tea", "price_cents": 1, "id": "x"},
    ]
    for data in bad:
        with pytest.raises(ProductError):
            check_product(data, partial=False)


def test_assemble_joins_the_category() -> None:
    seed = load_seed()
    product = assemble_product("7", seed.products["7"], seed.categories["coffee"])
    assert product["category"] == {"id": "coffee", **seed.categories["coffee"]}
    assert (product["in_stock"], product["price"]) == (False, "12.40")
    assert assemble_product("x", {"category": "gone"}, None)["category"]["name"] == "gone"


def test_report_figures() -> None:
    seed = load_seed()
    report = catalogue_report(list(seed.products.items()))
    assert report["products"] == 12
    assert report["out_of_stock"] == ["7"]
    assert report["cheapest"] == "3"
    assert report["dearest"] == "10"
    assert report["total_stock"] == sum(p["stock"] for p in seed.products.values())
    assert report["stock_value_cents"] == sum(
        p["stock"] * p["price_cents"] for p in seed.products.values()
    )
    assert catalogue_report([])["products"] == 0
    assert price_text(5) == "0.05"
