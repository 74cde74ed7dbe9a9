"""`rococap enqueue`: register a run in Redis and send its missing ids as Celery tasks.

One task is one chunk of ids (one GPU batch), so Celery's per-task cost is paid once per batch.
Ids already pushed by a worker, already in the run's files (when --out is readable here) or
already enqueued are skipped, so enqueueing the same run again only sends what is missing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from rococap.celery_app import CAPTION_TASK_NAME, make_celery_app, queue_for_model
from rococap.dataset import SplitSource
from rococap.errors import RococapError
from rococap.output import read_done_ids
from rococap.records import utc_now_iso
from rococap.runs import RUNS_KEY, RunKeys, RunSpec, connect_redis, load_spec, redact_url
from rococap.settings import CaptionSettings

log = logging.getLogger(__name__)

# Ids per SMISMEMBER / SADD call: large enough to pipeline, small enough for Redis' argument limits.
REDIS_IDS_PER_CALL = 5000


@dataclass(frozen=True)
class EnqueueSettings:
    redis_url: str
    dataset: str
    split: str
    run: str
    caption: CaptionSettings
    chunk_size: int
    out_dir: str | None = None
    resend_pending: bool = False


@dataclass(frozen=True)
class EnqueueResult:
    run: str
    queue: str
    selected: int
    done_before: int
    pending_before: int
    sent_ids: int
    tasks: int


def enqueue(
    settings: EnqueueSettings, limit: int | None = None, ids: Sequence[str] | None = None
) -> EnqueueResult:
    client = connect_redis(settings.redis_url)
    source = SplitSource.open(settings.dataset, settings.split)
    selected = source.select(limit=limit, ids=ids)
    spec = register_run(client, settings)
    keys = RunKeys(settings.run)
    pushed = _members(client, keys.pushed, selected)
    if settings.out_dir:
        pushed |= read_done_ids(settings.out_dir, settings.run, settings.split) & set(selected)
    enqueued = _members(client, keys.enqueued, selected)
    pending = enqueued - pushed
    skip = pushed if settings.resend_pending else pushed | pending
    todo = [image_id for image_id in selected if image_id not in skip]
    tasks = send_chunks(client, settings, spec.queue, todo)
    return EnqueueResult(
        run=settings.run,
        queue=spec.queue,
        selected=len(selected),
        done_before=len(pushed),
        pending_before=len(pending),
        sent_ids=len(todo),
        tasks=tasks,
    )


def register_run(client, settings: EnqueueSettings) -> RunSpec:
    """Create the run, or check that an existing one asks for the same split and caption settings."""
    existing = load_spec(client, settings.run)
    if existing is not None:
        if existing.split != settings.split or existing.caption != settings.caption:
            raise RococapError(
                f"run {settings.run!r} in Redis was created for split {existing.split!r} with "
                f"{_differences(existing.caption, settings.caption) or 'the same caption settings'}: "
                "use the same split and settings to add to it, or another --run name"
            )
        return existing
    spec = RunSpec(
        run=settings.run,
        split=settings.split,
        dataset=settings.dataset,
        queue=queue_for_model(settings.caption.model),
        caption=settings.caption,
        created_at=utc_now_iso(),
    )
    pipe = client.pipeline(transaction=True)
    pipe.hset(RunKeys(settings.run).spec, mapping=spec.to_hash())
    pipe.sadd(RUNS_KEY, settings.run)
    pipe.execute()
    return spec


def send_chunks(client, settings: EnqueueSettings, queue: str, todo: list[str]) -> int:
    """Mark ids enqueued, then publish one task per chunk over one broker connection."""
    if not todo:
        return 0
    keys = RunKeys(settings.run)
    pipe = client.pipeline(transaction=False)
    for start in range(0, len(todo), REDIS_IDS_PER_CALL):
        pipe.sadd(keys.enqueued, *todo[start : start + REDIS_IDS_PER_CALL])
    pipe.execute()
    app = make_celery_app(settings.redis_url)
    tasks = 0
    try:
        with app.producer_or_acquire() as producer:
            for start in range(0, len(todo), settings.chunk_size):
                app.send_task(
                    CAPTION_TASK_NAME,
                    kwargs={"run": settings.run, "ids": todo[start : start + settings.chunk_size]},
                    queue=queue,
                    producer=producer,
                    ignore_result=True,
                )
                tasks += 1
    except Exception as exc:
        raise RococapError(
            f"sending tasks to {redact_url(settings.redis_url)} failed after {tasks} tasks ({type(exc).__name__}: "
            f"{exc}): run the same enqueue command with --resend-pending once Redis is back"
        ) from None
    finally:
        app.close()
    return tasks


def _members(client, key: str, ids: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(ids), REDIS_IDS_PER_CALL):
        chunk = ids[start : start + REDIS_IDS_PER_CALL]
        found.update(
            image_id for image_id, member in zip(chunk, client.smismember(key, chunk), strict=True) if member
        )
    return found


def _differences(before: CaptionSettings, now: CaptionSettings) -> str:
    old, new = before.to_dict(), now.to_dict()
    return "; ".join(f"{name} {old[name]!r} (asked: {new[name]!r})" for name in old if old[name] != new[name])
