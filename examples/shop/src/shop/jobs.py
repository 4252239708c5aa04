"""Work that takes time, done by workers from a queue (RabbitMQ) rather than while a user waits.

POST /reports stores a ``pending`` job document, publishes one message and answers 202 with the job
id; a worker (``celery -A shop.jobs:celery_app worker``) computes the report and stores the result
in the same document (collection ``jobs``, keyed by job id), where GET /reports/<id> finds it.

A job survives the loss of the worker that runs it: the message is acknowledged only after the task
has finished (``task_acks_late``), a worker takes one message at a time
(``worker_prefetch_multiplier=1``), and a worker process that dies mid-task has its message put
back on the queue (``task_reject_on_worker_lost``). A message can therefore be delivered twice, so
the task is idempotent: its only effect is writing the result under the job's own key, and a job
already done is not redone.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from shop.catalogue import JOBS, all_products, catalogue_report
from shop.docstore import DocstoreUnavailable, DocumentStore, open_store
from shop.settings import Settings

log = logging.getLogger(__name__)

TASK_NAME = "shop.generate_report"
# A quorum queue: replicated on every node of a RabbitMQ cluster (the majority must confirm a
# message before the publisher is told it is safe), and on a single node just a durable queue.
# Its name is new with the queue type (the classic queue was "shop"): RabbitMQ refuses to declare
# an existing queue with another type, and a release that publishes to "shop.jobs" can run beside
# one that still consumes "shop" during a rolling deploy.
QUEUE = "shop.jobs"
QUEUE_ARGUMENTS = {"x-queue-type": "quorum"}

# Worker-side settings: what the worker role's `celery -A shop.jobs:celery_app worker` needs.
WORKER_SETTINGS = ("BROKER_URL", "DOCSTORE_ENGINE", "DOCSTORE_URL")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def run_report(store: DocumentStore, job_id: str, seconds: float, release: str | None) -> bool:
    """Compute the catalogue report for `job_id`; False if the job was already done.

    The job document records each attempt (``running``, which worker and process, how many
    attempts), so a job that a lost worker left half-done shows ``attempts: 2`` once redone.
    """
    job = store.get(JOBS, job_id)
    if job is not None and job.get("status") == "done":
        log.info("report %s: already done (a redelivered message), nothing to do", job_id)
        return False
    job = {"created_at": now_iso(), **(job or {})}
    job.update(
        status="running",
        attempts=int(job.get("attempts", 0)) + 1,
        started_at=now_iso(),
        worker=socket.gethostname(),
        pid=os.getpid(),
        release=release,
    )
    store.put(JOBS, job_id, job)
    time.sleep(seconds)  # the slow part a user must not wait for
    report = catalogue_report(all_products(store))
    store.put(JOBS, job_id, {**job, "status": "done", "finished_at": now_iso(), "result": report})
    return True


def job_queue() -> Queue:
    """The queue the web side publishes jobs to and the workers consume."""
    return Queue(QUEUE, Exchange(QUEUE), routing_key=QUEUE, queue_arguments=QUEUE_ARGUMENTS)


def make_celery(settings: Settings, store: DocumentStore | None = None) -> Celery:
    """The Celery application: the web side publishes through it, workers consume with it.

    `store` is the document store tasks write to; by default one is opened from the settings
    (it connects on first use, in each worker process).
    """
    app = Celery("shop", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        # Results live in the docstore, under the job's key: no result backend.
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=QUEUE,
        task_queues=[job_queue()],
        # A job survives a worker crash (see the module's docstring).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Lost broker connection: cancel running tasks, whose messages are redelivered anyway.
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # Publishing: confirmed by the broker, with a short, bounded retry.
        broker_connection_timeout=2,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"confirm_publish": True},
        task_publish_retry_policy={
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 1,
        },
        task_soft_time_limit=120,
        task_time_limit=180,
        worker_hijack_root_logger=False,
    )

    tasks_store = store or open_store(settings.docstore_engine, settings.docstore_url)

    @app.task(  # type: ignore[untyped-decorator]
        name=TASK_NAME,
        # Not shared: Celery would otherwise give this closure (and its store) to every Celery
        # app made later in the process, e.g. another clone's in the tests.
        shared=False,
        autoretry_for=(DocstoreUnavailable,),
        retry_backoff=2,
        retry_backoff_max=60,
        max_retries=10,
    )
    def generate_report(job_id: str, seconds: float = settings.report_seconds) -> bool:
        return run_report(tasks_store, job_id, seconds, settings.release_id)

    return app


class QueueUnavailable(RuntimeError):
    """A job could not be handed to the broker (down, unreachable, refused our credentials)."""


def enqueue_report(celery: Celery, job_id: str, seconds: float) -> None:
    """Publish the report job (runs it at once, in process, when task_always_eager is set)."""
    try:
        celery.tasks[TASK_NAME].apply_async(args=(job_id, seconds), task_id=job_id)
    except Exception as exc:  # kombu, py-amqp and socket errors alike: the job is not queued
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise QueueUnavailable(f"broker: {text}") from exc


_lazy: dict[str, Any] = {}
_lazy_lock = threading.Lock()


def __getattr__(name: str) -> Any:
    # `celery_app` is made on first access, from the environment, so that importing this module
    # (tests, the web side) needs no configuration. Celery finds it as `shop.jobs:celery_app`.
    if name != "celery_app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _lazy_lock:
        if name not in _lazy:
            _lazy[name] = make_celery(Settings.from_env(required=WORKER_SETTINGS))
        return _lazy[name]
