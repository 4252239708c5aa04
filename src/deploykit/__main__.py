"""Allow ``python -m deploykit``."""

from deploykit.cli import main

raise SystemExit(main())
