"""Caption a batch of dataset rows into records: the one code path of the local loop and the workers.

Every row comes back as exactly one record. Images that cannot be used become FailureRecords
with the reason; the rest of their batch is still captioned. A CUDA out-of-memory error splits
the batch in halves (down to single images); any other error in a batched generate call is
isolated by captioning that batch's images one at a time. A TransientError is raised on, for the
caller to retry the whole batch later.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from rococap.captioner import Caption, Captioner, is_out_of_memory
from rococap.dataset import ImageRow
from rococap.errors import ImageError, TransientError
from rococap.images import prepare_image
from rococap.records import CaptionRecord, FailureRecord, Record, utc_now_iso
from rococap.settings import CaptionSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedBatch:
    """Rows whose images are decoded and resized, and the failures found doing so."""

    rows: list[ImageRow]
    images: list[Image.Image]
    failures: list[tuple[ImageRow, str]]


def prepare_rows(rows: Sequence[ImageRow], settings: CaptionSettings) -> PreparedBatch:
    """Decode and resize each row's image (CPU work, safe to run in a helper thread)."""
    usable, images, failures = [], [], []
    for row in rows:
        try:
            images.append(prepare_image(row.image_bytes, settings.min_pixels, settings.max_pixels))
            usable.append(row)
        except ImageError as exc:
            failures.append((row, str(exc)))
    return PreparedBatch(usable, images, failures)


def caption_prepared(
    batch: PreparedBatch, captioner: Captioner, *, split: str, worker: str, batch_size: int, attempts: int = 1
) -> list[Record]:
    """Caption a prepared batch in generate calls of at most `batch_size` images."""
    model = captioner.settings.model
    records: list[Record] = [
        _failure(row, reason, attempts, split, model, worker) for row, reason in batch.failures
    ]
    for start in range(0, len(batch.rows), batch_size):
        rows = batch.rows[start : start + batch_size]
        images = batch.images[start : start + batch_size]
        for row, outcome in zip(rows, _caption_robustly(captioner, images), strict=True):
            if isinstance(outcome, Caption):
                records.append(
                    CaptionRecord(
                        image_id=row.image_id,
                        original_caption=row.caption,
                        generated_caption=outcome.text,
                        processing_time_sec=outcome.seconds,
                        model=model,
                        timestamp=utc_now_iso(),
                        split=split,
                        generated_tokens=outcome.generated_tokens,
                        batch_size=outcome.batch_size,
                        worker=worker,
                    )
                )
            else:
                records.append(_failure(row, outcome, attempts, split, model, worker))
    return records


def caption_rows(
    rows: Sequence[ImageRow],
    captioner: Captioner,
    *,
    split: str,
    worker: str,
    batch_size: int,
    attempts: int = 1,
) -> list[Record]:
    batch = prepare_rows(rows, captioner.settings)
    return caption_prepared(
        batch, captioner, split=split, worker=worker, batch_size=batch_size, attempts=attempts
    )


def _caption_robustly(captioner: Captioner, images: list[Image.Image]) -> list[Caption | str]:
    """Captions for `images`, or an error string in place of each image that could not be captioned."""
    try:
        return list(captioner.caption(images))
    except TransientError:
        raise  # the whole task is retried
    except Exception as exc:
        if is_out_of_memory(exc):
            _free_cuda_cache()
            if len(images) == 1:
                return [f"out of GPU memory even for a single image: {_one_line(exc)}"]
            half = len(images) // 2
            log.warning(
                "out of GPU memory on a batch of %d images; retrying as %d + %d",
                len(images),
                half,
                len(images) - half,
            )
            return _caption_robustly(captioner, images[:half]) + _caption_robustly(captioner, images[half:])
        if len(images) == 1:
            return [f"captioning failed: {type(exc).__name__}: {_one_line(exc)}"]
        log.warning("batch of %d images failed (%s); captioning them one by one", len(images), _one_line(exc))
        return [outcome for image in images for outcome in _caption_robustly(captioner, [image])]


def _failure(row: ImageRow, reason: str, attempts: int, split: str, model: str, worker: str) -> FailureRecord:
    return FailureRecord(
        image_id=row.image_id,
        error=reason,
        attempts=attempts,
        timestamp=utc_now_iso(),
        split=split,
        model=model,
        worker=worker,
    )


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def _free_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
