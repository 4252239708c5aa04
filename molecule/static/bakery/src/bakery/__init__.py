"""A test fixture of the static scenario: baked pages, and a WSGI app nobody runs there."""
