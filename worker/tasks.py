"""The caption task and the per-process worker state.

A task carries a run name and a chunk of image ids. It skips ids whose results were already
pushed (so a redelivered task never yields a second row), captions the rest through the shared
core (`rococap.batch`), and pushes one record per image to the run's stream in one MULTI/EXEC
together with marking the ids pushed. Transient errors retry the task with exponential backoff
and jitter; after the last retry its ids are pushed as failed with the error. A task whose
delivery keeps dying with its worker (a poison image) is captioned one image at a time on
redelivery, and past a bounded number of deliveries the image it dies on is recorded as failed.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from typing import Any

from rococap.batch import caption_rows
from rococap.captioner import Captioner
from rococap.celery_app import CAPTION_TASK_NAME, make_celery_app
from rococap.dataset import SplitSource
from rococap.errors import RococapError, TransientError
from rococap.records import FailureRecord, Record, utc_now_iso
from rococap.runs import RunKeys, RunSpec, load_spec
from rococap.settings import (
    DEFAULT_MAX_DELIVERIES,
    DEFAULT_MAX_RETRIES,
    DEFAULT_RETRY_BASE_DELAY_S,
    DEFAULT_VISIBILITY_TIMEOUT_S,
    CaptionSettings,
    RuntimeSettings,
)

log = logging.getLogger(__name__)

WARM_UP_SIDE_PX = 56
WARM_UP_TOKENS = 2
RETRY_MAX_DELAY_S = 300.0


@dataclass(frozen=True)
class WorkerSettings:
    redis_url: str
    model: str
    runtime: RuntimeSettings
    hostname: str
    dataset: str | None = None  # where this worker finds the dataset, if not where the run says
    max_retries: int = DEFAULT_MAX_RETRIES
    retry_base_delay_s: float = DEFAULT_RETRY_BASE_DELAY_S
    # Deliveries of one attempt (its worker died each time) before the image being captioned then is
    # recorded as failed. At least 2: deliveries after the first go one image at a time.
    max_deliveries: int = DEFAULT_MAX_DELIVERIES
    visibility_timeout_s: int = DEFAULT_VISIBILITY_TIMEOUT_S


def transient_errors() -> tuple[type[BaseException], ...]:
    import redis

    return (TransientError, RococapError, redis.ConnectionError, redis.TimeoutError)


class WorkerState:
    """What one worker process holds: a Redis client, the model (loaded at the first task), open splits."""

    def __init__(self, settings: WorkerSettings, captioner: Any = None):
        self.settings = settings
        self._captioner = captioner
        self._sources: dict[tuple[str, str], SplitSource] = {}
        self._specs: dict[str, RunSpec] = {}
        self._redis = None

    @property
    def redis(self):
        if self._redis is None:
            import redis

            self._redis = redis.Redis.from_url(
                self.settings.redis_url,
                decode_responses=True,
                socket_connect_timeout=5,
                socket_timeout=30,
                health_check_interval=30,
                retry_on_timeout=True,
            )
        return self._redis

    def captioner(self, caption: CaptionSettings):
        if self._captioner is None:
            log.info("loading model %s on %s", self.settings.model, self.settings.runtime.device)
            self._captioner = Captioner.load(
                CaptionSettings(model=self.settings.model), self.settings.runtime
            )
        return self._captioner.with_settings(caption)

    def warm_up(self) -> None:
        """Load the model and run one tiny generate now, before the worker takes tasks.

        The first generate call of a process is several times slower than the next ones (kernel
        and allocator warm-up); paying it here keeps it out of the first task, and a model that
        cannot be loaded stops the worker at start instead of failing tasks.
        """
        from PIL import Image

        import rococap.dataset  # noqa: F401  (imports datasets/pyarrow now, not in the first task)

        warm = CaptionSettings(model=self.settings.model, max_new_tokens=WARM_UP_TOKENS)
        self.captioner(warm).caption([Image.new("RGB", (WARM_UP_SIDE_PX, WARM_UP_SIDE_PX), (128, 128, 128))])

    def spec(self, run: str) -> RunSpec:
        if run not in self._specs:
            spec = load_spec(self.redis, run)
            if spec is None:
                raise RococapError(f"run {run!r} is not registered in Redis (was it deleted?)")
            self._specs[run] = spec
        return self._specs[run]

    def split_of(self, run: str) -> str:
        """The run's split if its spec was read already (failure rows are written even when it was not)."""
        return self._specs[run].split if run in self._specs else ""

    def source(self, spec: RunSpec) -> SplitSource:
        dataset = self.settings.dataset or spec.dataset
        key = (dataset, spec.split)
        if key not in self._sources:
            self._sources[key] = SplitSource.open(dataset, spec.split)
        return self._sources[key]


def push_records(client, run: str, records: list[Record], task_id: str | None) -> None:
    """Append records to the run's stream and mark their ids pushed, atomically."""
    keys = RunKeys(run)
    pipe = client.pipeline(transaction=True)
    for record in records:
        pipe.xadd(keys.results, {"record": json.dumps(record.to_json(), ensure_ascii=False)})
    if records:
        pipe.sadd(keys.pushed, *[record.image_id for record in records])
    if task_id:
        pipe.hdel(keys.active, task_id)
    pipe.execute()


def retry_delay_s(retries: int, base_s: float) -> float:
    """Exponential backoff with jitter: base * 2^retries, capped, times a random 0.5-1.0."""
    return min(RETRY_MAX_DELAY_S, base_s * (2**retries)) * random.uniform(0.5, 1.0)


def failures_for(
    ids: list[str], reason: str, attempts: int, state: WorkerState, run: str
) -> list[FailureRecord]:
    split = state.split_of(run)
    return [
        FailureRecord(
            image_id=image_id,
            error=reason,
            attempts=attempts,
            timestamp=utc_now_iso(),
            split=split,
            model=state.settings.model,
            worker=state.settings.hostname,
        )
        for image_id in ids
    ]


def caption_task(state: WorkerState, task, run: str, ids: list[str]) -> dict:
    """The body of the Celery task (see the module docstring).

    Whatever goes wrong, the task either finishes with every id pushed, or schedules a retry, or
    hands its message back (Reject with requeue): it never ends in a state that drops its ids.
    """
    from celery.exceptions import Reject, Retry

    try:
        return _caption_task(state, task, run, ids)
    except Retry:
        raise
    except Exception as exc:
        log.error(
            "run %s: task %s could not finish (%s: %s); handing it back to the queue",
            run,
            task.request.id,
            type(exc).__name__,
            exc,
        )
        raise Reject(exc, requeue=True) from None


def _caption_task(state: WorkerState, task, run: str, ids: list[str]) -> dict:
    keys = RunKeys(run)
    client = state.redis
    task_id = task.request.id
    retries = task.request.retries
    attempts = retries + 1
    todo = list(ids)
    try:
        todo = [
            image_id
            for image_id, pushed in zip(ids, client.smismember(keys.pushed, ids), strict=True)
            if not pushed
        ]
        if not todo:
            client.hdel(keys.active, task_id)
            return {"run": run, "skipped_already_done": len(ids)}
        deliveries = client.hincrby(keys.deliveries, f"{task_id}:{retries}", 1)
        records: list[Record] = []
        if deliveries > state.settings.max_deliveries:
            # Deliveries after the first caption one image at a time in order, so the first id not
            # pushed is the one that was being captioned when the worker died: give it up, go on.
            reason = (
                f"gave up after {deliveries - 1} deliveries that each ended with the worker dying "
                "(crash or kill while captioning this image)"
            )
            log.error("run %s: %s: %s recorded as failed", run, reason, todo[0])
            records = failures_for(todo[:1], reason, attempts, state, run)
            push_records(client, run, records, task_id if len(todo) == 1 else None)
            todo = todo[1:]
            if not todo:
                return {"run": run, "failed": 1}
        client.hset(keys.active, task_id, len(todo))
        spec = state.spec(run)
        captioner = state.captioner(spec.caption)
        # A redelivered attempt may hold an image that kills the worker: caption and push one image
        # at a time, so that only that image is left for the next delivery.
        step = len(todo) if deliveries == 1 else 1
        for start in range(0, len(todo), step):
            rows = state.source(spec).rows(todo[start : start + step])
            part = caption_rows(
                rows,
                captioner,
                split=spec.split,
                worker=state.settings.hostname,
                batch_size=state.settings.runtime.batch_size,
                attempts=attempts,
            )
            last = start + step >= len(todo)
            push_records(client, run, part, task_id if last else None)
            records += part
    except transient_errors() as exc:
        reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        if retries >= state.settings.max_retries:
            log.error("run %s: giving up on %d ids after %d attempts: %s", run, len(todo), attempts, reason)
            reason = f"gave up after {attempts} attempts: {reason}"
            push_records(client, run, failures_for(todo, reason, attempts, state, run), task_id)
            return {"run": run, "failed": len(todo)}
        delay = retry_delay_s(retries, state.settings.retry_base_delay_s)
        log.warning("run %s: attempt %d failed (%s); retrying in %.1f s", run, attempts, reason, delay)
        raise task.retry(exc=exc, countdown=delay, max_retries=state.settings.max_retries) from None
    captioned = sum(record.kind == "caption" for record in records)
    return {"run": run, "captioned": captioned, "failed": len(records) - captioned}


def make_worker_app(settings: WorkerSettings, captioner: Any = None):
    """A Celery app with the caption task bound to this process's WorkerState."""
    app = make_celery_app(settings.redis_url, settings.visibility_timeout_s)
    state = WorkerState(settings, captioner)

    @app.task(
        name=CAPTION_TASK_NAME, bind=True, acks_late=True, max_retries=settings.max_retries, shared=False
    )
    def caption(self, run: str, ids: list[str]) -> dict:
        return caption_task(state, self, run, ids)

    app.rococap_state = state
    return app
