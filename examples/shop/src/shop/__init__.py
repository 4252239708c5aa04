"""shop: deploykit's example application, a small web shop on the classic scalable stack.

- `shop.web:app`        the WSGI application (gunicorn, on every app clone)
- `shop.jobs:celery_app` the Celery application (workers)
- `shop.bake:bake`      pre-rendered pages, baked at build time
- `shop-migrate`        the schema migration (and catalogue seed), run before a release goes live
"""

__version__ = "1.0.0"
