"""What the example shop's users ask for, as a request mix for bench/loadgen.py: one home for the
bench that kills a clone under load (bench/clone_loss.py) and the fault tests whose killed-clone
step it repeats (tests/e2e/test_faults.py), so that the figures of the one and the assertions of
the other are about the same traffic. The tests import it through pytest's pythonpath
(pyproject.toml), as they do loadgen.
"""

from __future__ import annotations

from typing import Final

from loadgen import PathMix

#: Baked pages, product JSON, the user's session (`/me`, the heaviest: every user is logged in)
#: and the health path, by weight.
SHOP_USERS_MIX: Final[PathMix] = (
    ("/", 2),
    ("/products?limit=20", 2),
    ("/products/1", 1),
    ("/products/7", 1),
    ("/me", 3),
    ("/healthz", 1),
)
