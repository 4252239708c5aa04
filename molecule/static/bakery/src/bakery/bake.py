"""Pages baked at build time, and again "from live data" on the bake worker (DEPLOYKIT_BAKE=live,
which the index says): an index, a catalogue, a stylesheet and a name with a space."""

from __future__ import annotations

import os
from pathlib import Path


def bake(out_dir: Path) -> None:
    release = os.environ.get("DEPLOYKIT_RELEASE_ID", "unknown")
    baked = os.environ.get("DEPLOYKIT_BAKE", "at build time")
    (out_dir / "index.html").write_text(
        f"<h1>bakery</h1><p>{release}</p><p>baked {baked}</p>\n", encoding="utf-8"
    )
    (out_dir / "catalogue").mkdir()
    (out_dir / "catalogue" / "index.html").write_text(
        f"<h1>catalogue</h1><p>{release}</p>\n", encoding="utf-8"
    )
    (out_dir / "assets").mkdir()
    (out_dir / "assets" / "site.css").write_text(
        "body { font-family: sans-serif; }\n", encoding="utf-8"
    )
    (out_dir / "about us.html").write_text("<h1>about us</h1>\n", encoding="utf-8")
