"""`rococap run`: the local pipeline without Redis. Select ids, caption in batches, write the CSV."""

from __future__ import annotations

import logging
import socket
import statistics
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from rococap import __version__
from rococap.batch import PreparedBatch, caption_prepared, prepare_rows
from rococap.captioner import Captioner, check_model_source
from rococap.dataset import SplitSource
from rococap.images import visual_tokens
from rococap.output import RunOutput
from rococap.records import CaptionRecord
from rococap.settings import SIZE_SORT_WINDOW_BATCHES, Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSummary:
    run_folder: str
    selected: int
    skipped_done: int
    captioned: int
    failed: int
    wall_seconds: float
    seconds_per_image: tuple[float, float, float] | None  # mean, min, max over this session's captions
    peak_gpu_memory_gb: float | None

    @property
    def images_per_second(self) -> float:
        done = self.captioned + self.failed
        return done / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def lines(self) -> list[str]:
        done = self.captioned + self.failed
        rate = 100.0 * self.captioned / done if done else 100.0
        lines = [
            f"run folder:        {self.run_folder}",
            f"selected images:   {self.selected} ({self.skipped_done} already done before this session)",
            f"this session:      {done} images, {self.captioned} captioned, {self.failed} failed "
            f"(success rate {rate:.1f}%)",
            f"throughput:        {self.images_per_second:.2f} images/s over {self.wall_seconds:.1f} s",
        ]
        if self.seconds_per_image:
            mean, low, high = self.seconds_per_image
            lines.append(f"seconds per image: mean {mean:.3f}, min {low:.3f}, max {high:.3f}")
        if self.peak_gpu_memory_gb is not None:
            lines.append(f"peak GPU memory:   {self.peak_gpu_memory_gb:.2f} GB")
        return lines


def package_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"rococap": __version__}
    for name in ("torch", "transformers", "qwen-vl-utils", "datasets", "pillow", "celery"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def run_manifest(settings: Settings, captioner: Captioner | None = None) -> dict:
    runtime = settings.runtime.to_dict()
    if captioner is not None:
        runtime.update(device=captioner.device, dtype=captioner.dtype_name)
    return {
        "run": settings.output.run,
        "split": settings.split,
        "dataset": settings.dataset,
        "caption_settings": settings.caption.to_dict(),
        "runtime": runtime,
        "versions": package_versions(),
    }


def batches(ids: Sequence[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(ids), size):
        yield list(ids[start : start + size])


def order_by_size(todo: Sequence[str], source: SplitSource, settings: Settings) -> list[str]:
    """Within windows of a few batches, order ids by image size so that a batch pads little."""
    window = settings.runtime.batch_size * SIZE_SORT_WINDOW_BATCHES
    ordered: list[str] = []
    for start in range(0, len(todo), window):
        rows = source.rows(todo[start : start + window])
        sizes = {
            row.image_id: visual_tokens(
                row.image_bytes, settings.caption.min_pixels, settings.caption.max_pixels
            )
            for row in rows
        }
        ordered += sorted(todo[start : start + window], key=sizes.__getitem__)
    return ordered


def run_local(
    settings: Settings,
    *,
    limit: int | None = None,
    ids: Sequence[str] | None = None,
    retry_failed: bool = False,
    show_progress: bool | None = None,
    captioner: Captioner | None = None,
    prefetch: bool = True,
) -> RunSummary:
    """Caption the selected ids of a split into `<out>/<run>/`; resumes what is already there."""
    started = time.perf_counter()
    if captioner is None:
        check_model_source(settings.caption.model)
    source = SplitSource.open(settings.dataset, settings.split)
    selected = source.select(limit=limit, ids=ids)
    output = RunOutput(
        settings.output.out_dir, settings.output.run, settings.split, settings.output.checkpoint_every
    )
    output.open(run_manifest(settings))
    if retry_failed:
        output.retry_failed(selected)
    todo = [image_id for image_id in selected if image_id not in output.done]
    skipped = len(selected) - len(todo)
    output.update_manifest(counts={"selected": len(selected)})
    if todo and captioner is None:
        captioner = Captioner.load(settings.caption, settings.runtime)
    if captioner is not None:
        output.update_manifest(runtime=run_manifest(settings, captioner)["runtime"])
    log.info("%d selected, %d already done, %d to caption", len(selected), skipped, len(todo))
    session_seconds: list[float] = []
    captioned = failed = 0
    try:
        if settings.runtime.sort_by_size:
            todo = order_by_size(todo, source, settings)
        for records in _caption_stream(todo, source, captioner, settings, show_progress, prefetch):
            for record in records:
                if output.add(record):
                    if isinstance(record, CaptionRecord):
                        captioned += 1
                        session_seconds.append(record.processing_time_sec)
                    else:
                        failed += 1
    finally:
        output.checkpoint()
    return RunSummary(
        run_folder=str(output.folder),
        selected=len(selected),
        skipped_done=skipped,
        captioned=captioned,
        failed=failed,
        wall_seconds=time.perf_counter() - started,
        seconds_per_image=(statistics.fmean(session_seconds), min(session_seconds), max(session_seconds))
        if session_seconds
        else None,
        peak_gpu_memory_gb=_peak_gpu_memory_gb(captioner),
    )


def _caption_stream(todo, source: SplitSource, captioner, settings: Settings, show_progress, prefetch=True):
    """Yield each batch's records; the next batch is read and decoded while this one generates."""
    from tqdm import tqdm

    if not todo:
        return
    worker = f"local@{socket.gethostname()}"
    batch_size = settings.runtime.batch_size

    def load(chunk: list[str]) -> PreparedBatch:
        return prepare_rows(source.rows(chunk), settings.caption)

    chunks = list(batches(todo, batch_size))
    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as pool,
        tqdm(
            total=len(todo),
            unit="img",
            desc=f"captioning {settings.split}",
            disable=None if show_progress is None else not show_progress,
            smoothing=0.1,
            dynamic_ncols=True,
        ) as progress,
    ):
        upcoming: Future = pool.submit(load, chunks[0])
        for index in range(len(chunks)):
            prepared = upcoming.result()
            if index + 1 < len(chunks):
                upcoming = pool.submit(load, chunks[index + 1])
                if not prefetch:  # for measuring what the overlap gains
                    upcoming.result()
            yield caption_prepared(
                prepared, captioner, split=settings.split, worker=worker, batch_size=batch_size
            )
            progress.update(len(chunks[index]))


def _peak_gpu_memory_gb(captioner: Captioner | None) -> float | None:
    if captioner is None or not str(captioner.device).startswith("cuda"):
        return None
    import torch

    return torch.cuda.max_memory_allocated() / 1e9
