"""The bakery: pages rendered ahead of time, from the catalogue.

`deploykit build` calls `bake(out_dir)` on the controller, where no service runs: the pages come
from the package's own seed data (shop/data/catalogue.json) and templates only. deploykit's bake
worker calls the same `bake(out_dir)` with DEPLOYKIT_BAKE=live and the application's settings: the
pages then come from the live document store ("bake the bread overnight"). The output is
deterministic (no timestamps), so the same data, source and release id bake the same bytes; each
page names the release that baked it when DEPLOYKIT_RELEASE_ID is set.

    python -m shop.bake OUT_DIR
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from shop.catalogue import CATEGORIES, all_products, assemble_product, load_seed, sort_key
from shop.docstore import Document, open_store
from shop.settings import RELEASE_VARIABLE, Settings

#: Set to "live" by deploykit's bake worker: bake from the document store, not the seed data.
BAKE_VARIABLE = "DEPLOYKIT_BAKE"

#: Page path (relative to the output directory) -> template.
PAGES = {"index.html": "index.html", "catalogue/index.html": "catalogue.html"}


def live_catalogue() -> tuple[dict[str, Document], dict[str, Document]]:
    """(categories, products) read from the document store DOCSTORE_ENGINE/DOCSTORE_URL name."""
    settings = Settings.from_env(required=("DOCSTORE_ENGINE", "DOCSTORE_URL"))
    store = open_store(settings.docstore_engine, settings.docstore_url)
    try:
        categories = dict(store.find(CATEGORIES, limit=500))
        products = dict(all_products(store))
    finally:
        store.close()
    return categories, products


def _context(
    release: str | None, catalogue: tuple[dict[str, Document], dict[str, Document]] | None
) -> dict[str, Any]:
    if catalogue is None:
        seed = load_seed()
        catalogue = (seed.categories, seed.products)
    all_categories, all_products_ = catalogue
    categories = []
    for category_id, category in all_categories.items():
        products = [
            assemble_product(product_id, product, category)
            for product_id, product in sorted(all_products_.items(), key=lambda i: sort_key(i[0]))
            if product.get("category") == category_id
        ]
        categories.append({"id": category_id, **category, "products": products})
    return {"release": release, "categories": categories, "product_count": len(all_products_)}


def render_pages(
    release: str | None,
    catalogue: tuple[dict[str, Document], dict[str, Document]] | None = None,
) -> dict[str, str]:
    """Page path -> HTML, from ``catalogue`` (categories, products), else the seed data."""
    env = Environment(
        loader=PackageLoader("shop", "templates"),
        autoescape=select_autoescape(default=True),
        keep_trailing_newline=True,
    )
    context = _context(release, catalogue)
    return {path: env.get_template(name).render(context) for path, name in PAGES.items()}


def bake(out_dir: Path) -> None:
    """Write index.html and catalogue/index.html into `out_dir` (created if missing): from the
    document store when DEPLOYKIT_BAKE=live, else from the seed data."""
    out_dir = Path(out_dir)
    catalogue = live_catalogue() if os.environ.get(BAKE_VARIABLE) == "live" else None
    for path, html in render_pages(os.environ.get(RELEASE_VARIABLE) or None, catalogue).items():
        target = out_dir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(html, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m shop.bake OUT_DIR", file=sys.stderr)
        return 2
    bake(Path(args[0]))
    for path in PAGES:
        print(Path(args[0]) / path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
