"""The shop's domain: products and categories, denormalised documents joined in application code."""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

from shop.docstore import Document, DocumentStore

PRODUCTS = "products"
CATEGORIES = "categories"
JOBS = "jobs"
#: Every collection the application uses (created by `shop-migrate`).
COLLECTIONS = (PRODUCTS, CATEGORIES, JOBS)

PRODUCT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "category": str,
    "price_cents": int,
    "stock": int,
    "description": str,
    "tags": list,
}
_REQUIRED = ("name", "category", "price_cents")


class ProductError(ValueError):
    """A product document that does not hold together."""


@dataclass(frozen=True)
class Seed:
    categories: dict[str, Document]
    products: dict[str, Document]


@functools.cache
def load_seed() -> Seed:
    """The catalogue bundled with the package (the lab's data, and what the bakery bakes)."""
    text = resources.files("shop").joinpath("data/catalogue.json").read_text(encoding="utf-8")
    data = json.loads(text)
    return Seed(categories=data["categories"], products=data["products"])


def seed(store: DocumentStore) -> int:
    """Insert the bundled documents that are missing (never overwrites); how many were added."""
    data = load_seed()
    added = 0
    for key, doc in data.categories.items():
        added += store.insert(CATEGORIES, key, doc)
    for key, doc in data.products.items():
        added += store.insert(PRODUCTS, key, doc)
    return added


def sort_key(product_id: str) -> tuple[int, str]:
    """Numeric ids in numeric order, then the others."""
    return (int(product_id), "") if product_id.isdigit() else (1 << 62, product_id)


def price_text(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def assemble_product(product_id: str, product: Document, category: Document | None) -> Document:
    """The object a product page needs: the product with its category joined in."""
    category_id = product.get("category", "")
    stock = int(product.get("stock", 0))
    return {
        "id": product_id,
        "name": product.get("name", ""),
        "description": product.get("description", ""),
        "price_cents": int(product.get("price_cents", 0)),
        "price": price_text(int(product.get("price_cents", 0))),
        "stock": stock,
        "in_stock": stock > 0,
        "tags": list(product.get("tags", [])),
        "category": {
            "id": category_id,
            "name": (category or {}).get("name", category_id),
            "description": (category or {}).get("description", ""),
        },
    }


def load_product(store: DocumentStore, product_id: str) -> Document | None:
    """Read the product and its category (two reads by key, no join) and assemble them."""
    product = store.get(PRODUCTS, product_id)
    if product is None:
        return None
    category_id = product.get("category")
    category = None
    if isinstance(category_id, str) and category_id:
        category = store.get(CATEGORIES, category_id)
    return assemble_product(product_id, product, category)


def check_product(data: Any, *, partial: bool) -> Document:
    """The product fields in `data`, checked; all required fields unless `partial`."""
    if not isinstance(data, dict):
        raise ProductError("send a JSON object")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ProductError(f"unknown field(s): {', '.join(unknown)}")
    if not partial:
        missing = [name for name in _REQUIRED if name not in data]
        if missing:
            raise ProductError(f"missing field(s): {', '.join(missing)}")
    for name, value in data.items():
        kind = _FIELDS[name]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise ProductError(f"{name} must be of type {getattr(kind, '__name__', kind)}")
    if "name" in data and not 1 <= len(data["name"].strip()) <= 200:
        raise ProductError("name must be 1 to 200 characters")
    if "category" in data and not PRODUCT_ID.match(data["category"]):
        raise ProductError("category must be a category id: 1 to 64 letters, digits, - or _")
    if "description" in data and len(data["description"]) > 5000:
        raise ProductError("description must be at most 5000 characters")
    for name in ("price_cents", "stock"):
        if name in data and not 0 <= data[name] <= 10**9:
            raise ProductError(f"{name} must be from 0 to 1000000000")
    if "tags" in data and not all(isinstance(tag, str) and tag for tag in data["tags"]):
        raise ProductError("tags must be a list of non-empty strings")
    return dict(data)


def all_products(store: DocumentStore, page: int = 500) -> list[tuple[str, Document]]:
    """Every product, read page by page in key order."""
    found: list[tuple[str, Document]] = []
    after: str | None = None
    while True:
        batch = store.find(PRODUCTS, limit=page, after=after)
        found.extend(batch)
        if len(batch) < page:
            return found
        after = batch[-1][0]


def catalogue_report(products: list[tuple[str, Document]]) -> Document:
    """Figures over the whole catalogue: what a report job computes."""
    by_category: dict[str, dict[str, int]] = {}
    total_stock = 0
    value = 0
    out_of_stock: list[str] = []
    priced: list[tuple[int, str]] = []
    for product_id, doc in products:
        price = int(doc.get("price_cents", 0))
        stock = int(doc.get("stock", 0))
        entry = by_category.setdefault(
            str(doc.get("category", "")), {"products": 0, "stock": 0, "stock_value_cents": 0}
        )
        entry["products"] += 1
        entry["stock"] += stock
        entry["stock_value_cents"] += price * stock
        total_stock += stock
        value += price * stock
        priced.append((price, product_id))
        if stock <= 0:
            out_of_stock.append(product_id)
    priced.sort()
    return {
        "products": len(products),
        "total_stock": total_stock,
        "stock_value_cents": value,
        "stock_value": price_text(value),
        "average_price_cents": round(sum(p for p, _ in priced) / len(priced)) if priced else 0,
        "cheapest": priced[0][1] if priced else None,
        "dearest": priced[-1][1] if priced else None,
        "out_of_stock": sorted(out_of_stock, key=sort_key),
        "by_category": dict(sorted(by_category.items())),
    }
