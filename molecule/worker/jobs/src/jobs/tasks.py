"""The Celery application (``jobs.tasks:celery_app``) and its one task."""

from __future__ import annotations

import logging
import os
import time

from celery import Celery

log = logging.getLogger(__name__)

# Importing this module needs no service: the broker is contacted when the worker starts.
celery_app = Celery("jobs", broker=os.environ.get("BROKER_URL", "memory://"), set_as_current=False)
celery_app.conf.update(
    broker_connection_retry_on_startup=True,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
)


@celery_app.task(name="jobs.slow")
def slow(seconds: float, tag: str) -> str:
    """Sleep, then say so: a stop of the worker in the meantime must let it finish."""
    log.warning("slow task %s started (release %s)", tag, os.environ.get("DEPLOYKIT_RELEASE_ID"))
    time.sleep(seconds)
    log.warning("slow task %s finished after %s s", tag, seconds)
    return tag
