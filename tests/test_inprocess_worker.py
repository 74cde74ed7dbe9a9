"""A real Celery worker (in a thread of the test process) against real Redis and the real collector,
with a captioner that fails on purpose: transient errors and CUDA out-of-memory."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from celery.contrib.testing.worker import start_worker

from rococap.captioner import Captioner
from rococap.collector.collect import Collector, CollectorSettings
from rococap.errors import TransientError
from rococap.producer.enqueue import EnqueueSettings, enqueue
from rococap.settings import CaptionSettings, RuntimeSettings
from rococap.worker.launcher import plan_workers
from rococap.worker.tasks import WorkerSettings, make_worker_app

pytestmark = pytest.mark.slow


class FlakyCaptioner:
    """The real captioner, except for the failures a test asks for."""

    def __init__(self, inner: Captioner, transient_failures: int = 0, oom_above: int | None = None):
        self.inner, self.settings = inner, inner.settings
        self.transient_failures, self.oom_above = transient_failures, oom_above
        self.batch_sizes: list[int] = []

    def with_settings(self, settings):
        self.inner = self.inner.with_settings(settings)
        self.settings = settings
        return self

    def caption(self, images):
        self.batch_sizes.append(len(images))
        if len(self.batch_sizes) <= self.transient_failures:
            raise TransientError("GPU temporarily unavailable")
        if self.oom_above is not None and len(images) > self.oom_above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner.caption(images)


def run_job(
    tmp_path,
    redis_server,
    tiny_model,
    rocov2_folder,
    images: int,
    chunk: int,
    max_retries: int = 2,
    batch_size: int = 8,
    **failures,
):
    caption = CaptionSettings(model=str(tiny_model), max_new_tokens=6)
    captioner = FlakyCaptioner(Captioner.load(caption, RuntimeSettings(device="cpu")), **failures)
    plan = plan_workers(["cpu"], str(tiny_model))[0]
    settings = WorkerSettings(
        redis_url=redis_server.url,
        model=str(tiny_model),
        hostname=plan.hostname,
        runtime=RuntimeSettings(device="cpu", batch_size=batch_size),
        max_retries=max_retries,
        retry_base_delay_s=0.05,
    )
    app = make_worker_app(settings, captioner=captioner)
    enqueue(
        EnqueueSettings(
            redis_url=redis_server.url,
            dataset=str(rocov2_folder),
            split="test",
            run="job",
            caption=caption,
            chunk_size=chunk,
        ),
        limit=images,
    )
    collector = Collector(
        CollectorSettings(
            redis_url=redis_server.url, out_dir=str(tmp_path), checkpoint_every=2, run="job", until_done=True
        ),
        redis_server.client(),
    )
    with start_worker(app, pool="solo", perform_ping_check=False, queues=[plan.queue], shutdown_timeout=30):
        assert collector.serve() == 0
    folder = tmp_path / "job"
    return (
        captioner,
        pd.read_csv(folder / "medical_captions_test.csv"),
        pd.read_csv(folder / "failed_test.csv"),
    )


def expected_ids(count: int) -> list[str]:
    return [f"ROCOv2_2023_test_{n:06d}" for n in range(1, count + 1)]


def test_transient_error_is_retried_and_the_ids_are_captioned(
    tmp_path, redis_server, tiny_model, rocov2_folder
):
    captioner, captions, failed = run_job(
        tmp_path, redis_server, tiny_model, rocov2_folder, images=4, chunk=4, transient_failures=1
    )
    assert captioner.batch_sizes == [4, 4]
    assert sorted(captions["image_id"]) == expected_ids(4)
    assert failed.empty


def test_exhausted_retries_record_the_ids_as_failed_with_the_error(
    tmp_path, redis_server, tiny_model, rocov2_folder
):
    captioner, captions, failed = run_job(
        tmp_path,
        redis_server,
        tiny_model,
        rocov2_folder,
        images=4,
        chunk=4,
        transient_failures=99,
        max_retries=2,
    )
    assert len(captioner.batch_sizes) == 3
    assert sorted(failed["image_id"]) == expected_ids(4)
    assert (
        failed["error"]
        .str.contains("gave up after 3 attempts: TransientError: GPU temporarily unavailable")
        .all()
    )
    assert (failed["attempts"] == 3).all()
    assert captions.empty


def test_out_of_memory_splits_the_batch_and_every_id_is_captioned(
    tmp_path, redis_server, tiny_model, rocov2_folder
):
    captioner, captions, failed = run_job(
        tmp_path, redis_server, tiny_model, rocov2_folder, images=16, chunk=8, oom_above=3
    )
    assert sorted(captions["image_id"]) == expected_ids(16)
    assert failed.empty
    assert 8 in captioner.batch_sizes and max(captioner.batch_sizes[1:]) <= 8
    assert set(captions["batch_size"]) <= {1, 2, 3}
