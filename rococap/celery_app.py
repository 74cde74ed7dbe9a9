"""The Celery application: Redis broker, JSON only, late acks, results ignored.

Results do not travel as Celery results: workers push one record per image to the run's Redis
stream, and the collector writes them to disk (see rococap.runs).
"""

from __future__ import annotations

import hashlib
import re

from celery import Celery

from rococap.settings import DEFAULT_VISIBILITY_TIMEOUT_S

CAPTION_TASK_NAME = "rococap.caption"
QUEUE_PREFIX = "rococap.caption."


def queue_for_model(model: str) -> str:
    """One queue per model, so that a worker only takes tasks for the model it holds."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", model.rstrip("/").split("/")[-1])[:40] or "model"
    digest = hashlib.sha256(model.encode("utf-8")).hexdigest()[:8]
    return f"{QUEUE_PREFIX}{readable}.{digest}"


def transport_options(visibility_timeout_s: int) -> dict:
    """Redis transport: unacked tasks come back after the visibility timeout, checked often enough.

    kombu sweeps for expired unacked tasks every interval x throttle seconds (100 s by default);
    sweeping every 1-10 s (a tenth of the timeout) brings a dead worker's task back soon after
    its timeout, and costs one small sorted-set query.
    """
    return {
        "visibility_timeout": visibility_timeout_s,
        "unacked_restore_interval": max(1, min(10, visibility_timeout_s // 10)),
        "unacked_restore_throttle": 1,
    }


def make_celery_app(redis_url: str, visibility_timeout_s: int = DEFAULT_VISIBILITY_TIMEOUT_S) -> Celery:
    app = Celery("rococap", broker=redis_url, set_as_current=False)
    app.conf.update(
        broker_url=redis_url,
        result_backend=None,
        task_ignore_result=True,
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # A task that fails unexpectedly is redelivered rather than dropped; the worker bounds
        # deliveries per task and records the ids as failed past that bound.
        task_acks_on_failure_or_timeout=False,
        worker_prefetch_multiplier=1,
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_track_started=True,
        broker_transport_options=transport_options(visibility_timeout_s),
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        task_default_queue=QUEUE_PREFIX + "default",
    )
    return app
