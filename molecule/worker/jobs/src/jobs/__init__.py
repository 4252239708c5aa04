"""A test fixture of the worker scenario: a Celery worker (and a WSGI app nobody runs there)."""
