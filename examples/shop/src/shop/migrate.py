"""Schema migration: `shop-migrate` (or `python -m shop.migrate`), run before a release goes live.

It is idempotent and safe to run on several nodes at once (PostgreSQL: under an advisory lock):

- PostgreSQL: creates the table of every collection the application uses, and applies the expand
  steps of earlier releases (columns added with ADD COLUMN IF NOT EXISTS);
- MongoDB: creates the collections that are missing (the _id index comes with each).

Then, unless --no-seed, it inserts the bundled catalogue documents that are missing (it never
overwrites a document, so edits made through the app survive every deploy).

Schema changes follow expand/contract, because during a rolling deploy the old and the new release
run side by side against the same data: a release only ever *adds* (tables, columns, optional
document fields that readers treat as absent when missing); removing or renaming something is a
later release's *contract* step, once no running release reads the old shape.
"""

from __future__ import annotations

import argparse
import sys

from shop.catalogue import COLLECTIONS, seed
from shop.docstore import DocstoreError, open_store
from shop.settings import ConfigError, Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="shop-migrate",
        description="Create the shop's collections (idempotent) and seed the missing catalogue "
        "documents. Reads DOCSTORE_ENGINE and DOCSTORE_URL from the environment.",
    )
    parser.add_argument(
        "--no-seed", action="store_true", help="do not insert the bundled catalogue documents"
    )
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(required=("DOCSTORE_ENGINE", "DOCSTORE_URL"))
    except ConfigError as exc:
        print(f"shop-migrate: {exc}", file=sys.stderr)
        return 2
    store = open_store(settings.docstore_engine, settings.docstore_url)
    try:
        store.ensure_collections(COLLECTIONS)
        print(f"shop-migrate: {settings.docstore_engine}: collections {', '.join(COLLECTIONS)}")
        if not args.no_seed:
            added = seed(store)
            print(f"shop-migrate: seeded {added} missing document(s)")
    except DocstoreError as exc:
        print(f"shop-migrate: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
