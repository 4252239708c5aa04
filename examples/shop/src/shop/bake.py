"""The bakery: pages rendered ahead of time, at build time, from the catalogue in the package.

`deploykit build` calls `bake(out_dir)` on the controller, where no service runs: the pages come
from the package's own seed data (shop/data/catalogue.json) and templates only. The output is
deterministic (no timestamps), so the same source and release id bake the same bytes; each page
names the release that baked it when DEPLOYKIT_RELEASE_ID is set.

    python -m shop.bake OUT_DIR
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from shop.catalogue import assemble_product, load_seed, sort_key
from shop.settings import RELEASE_VARIABLE

#: Page path (relative to the output directory) -> template.
PAGES = {"index.html": "index.html", "catalogue/index.html": "catalogue.html"}


def _context(release: str | None) -> dict[str, Any]:
    seed = load_seed()
    categories = []
    for category_id, category in seed.categories.items():
        products = [
            assemble_product(product_id, product, category)
            for product_id, product in sorted(seed.products.items(), key=lambda i: sort_key(i[0]))
            if product.get("category") == category_id
        ]
        categories.append({"id": category_id, **category, "products": products})
    return {"release": release, "categories": categories, "product_count": len(seed.products)}


def render_pages(release: str | None) -> dict[str, str]:
    """Page path -> HTML."""
    env = Environment(
        loader=PackageLoader("shop", "templates"),
        autoescape=select_autoescape(default=True),
        keep_trailing_newline=True,
    )
    context = _context(release)
    return {path: env.get_template(name).render(context) for path, name in PAGES.items()}


def bake(out_dir: Path) -> None:
    """Write index.html and catalogue/index.html into `out_dir` (created if missing)."""
    out_dir = Path(out_dir)
    for path, html in render_pages(os.environ.get(RELEASE_VARIABLE) or None).items():
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
