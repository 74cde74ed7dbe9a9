"""Task retries in an in-process worker (real Celery worker thread, real Redis, real collector)."""

from __future__ import annotations

import pandas as pd
import pytest
from celery.contrib.testing.worker import start_worker
from rococap.collector.collect import Collector, CollectorSettings
from rococap.producer.enqueue import EnqueueSettings, enqueue
from rococap.worker.launcher import plan_workers
from rococap.worker.tasks import WorkerSettings, make_worker_app

from rococap.captioner import Captioner
from rococap.errors import TransientError
from rococap.settings import CaptionSettings, RuntimeSettings


class FailingCaptioner:
    """The real captioner, except that its first `failures` calls raise a transient error."""

    def __init__(self, inner: Captioner, failures: int):
        self.inner, self.failures, self.calls = inner, failures, 0
        self.settings = inner.settings

    def with_settings(self, settings):
        self.settings = settings
        self.inner = self.inner.with_settings(settings)
        return self

    def caption(self, images):
        self.calls += 1
        if self.calls <= self.failures:
            raise TransientError("GPU temporarily unavailable")
        return self.inner.caption(images)


def run_pipeline(tmp_path, redis_server, tiny_model, rocov2_folder, failures: int, max_retries: int = 2):
    caption = CaptionSettings(model=str(tiny_model), max_new_tokens=6)
    captioner = FailingCaptioner(Captioner.load(caption, RuntimeSettings(device="cpu")), failures)
    plan = plan_workers(["cpu"], str(tiny_model))[0]
    settings = WorkerSettings(
        redis_url=redis_server.url,
        model=str(tiny_model),
        runtime=RuntimeSettings(device="cpu"),
        hostname=plan.hostname,
        max_retries=max_retries,
        retry_base_delay_s=0.05,
    )
    app = make_worker_app(settings, captioner=captioner)
    enqueue(
        EnqueueSettings(
            redis_url=redis_server.url,
            dataset=str(rocov2_folder),
            split="test",
            run="retry",
            caption=caption,
            chunk_size=4,
        ),
        limit=4,
    )
    collector = Collector(
        CollectorSettings(
            redis_url=redis_server.url,
            out_dir=str(tmp_path),
            checkpoint_every=2,
            run="retry",
            until_done=True,
        ),
        redis_server.client(),
    )
    with start_worker(app, pool="solo", perform_ping_check=False, queues=[plan.queue], shutdown_timeout=30):
        assert collector.serve() == 0
    return captioner, tmp_path / "retry"


@pytest.mark.slow
def test_transient_error_is_retried_and_the_ids_are_captioned(
    tmp_path, redis_server, tiny_model, rocov2_folder
):
    captioner, folder = run_pipeline(tmp_path, redis_server, tiny_model, rocov2_folder, failures=1)
    assert captioner.calls == 2
    captions = pd.read_csv(folder / "medical_captions_test.csv")
    assert sorted(captions["image_id"]) == [f"ROCOv2_2023_test_{n:06d}" for n in range(1, 5)]
    assert pd.read_csv(folder / "failed_test.csv").empty


@pytest.mark.slow
def test_exhausted_retries_record_the_ids_as_failed_with_the_error(
    tmp_path, redis_server, tiny_model, rocov2_folder
):
    captioner, folder = run_pipeline(
        tmp_path, redis_server, tiny_model, rocov2_folder, failures=99, max_retries=2
    )
    assert captioner.calls == 3
    failed = pd.read_csv(folder / "failed_test.csv")
    assert sorted(failed["image_id"]) == [f"ROCOv2_2023_test_{n:06d}" for n in range(1, 5)]
    assert (
        failed["error"]
        .str.contains("gave up after 3 attempts: TransientError: GPU temporarily unavailable")
        .all()
    )
    assert (failed["attempts"] == 3).all()
    assert pd.read_csv(folder / "medical_captions_test.csv").empty
