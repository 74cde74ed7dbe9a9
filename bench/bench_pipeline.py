"""Distributed pipeline figures with the tiny model on CPU, each against a private redis-server.

Rerun: .venv/bin/python bench/bench_pipeline.py --images 400 --batch-size 8 --tokens 32
  1. the local loop (`rococap run`'s code) vs enqueue -> N `rococap worker --gpus cpu` processes ->
     collector until done (same images, batch size and max tokens), for 1 and 2 workers;
  2. the enqueue rate for --enqueue-ids ids (default 60,000) in chunks of --batch-size;
  3. the collector's rows/s draining --collect-rows records already in a run's stream.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO_ROOT, machine_line, prepare

from rococap.collector.collect import Collector, CollectorSettings
from rococap.local import run_local
from rococap.producer.enqueue import EnqueueSettings, enqueue
from rococap.records import CaptionRecord
from rococap.runs import RunKeys
from rococap.settings import CaptionSettings, OutputSettings, RuntimeSettings, Settings
from rococap.worker.tasks import push_records
from tests.fixtures.rocov2 import Row, png_bytes, synthetic_image, write_split
from tests.services import RedisServer, wait_until

ROCOCAP = str(Path(sys.executable).with_name("rococap"))


def local_vs_distributed(workdir: Path, model: Path, dataset: Path, images: int, batch: int, tokens: int):
    """Local loop in this process vs enqueue + collect in this process with warm worker processes.

    Both sides start with imports done; the local loop loads the model in the timed region, the
    workers before they come online, so the ratio is the pipeline's own cost plus one model load.
    """
    caption = CaptionSettings(model=str(model), max_new_tokens=tokens)
    runtime = RuntimeSettings(device="cpu", dtype="float32", batch_size=batch)
    local = run_local(
        Settings(
            dataset=str(dataset),
            split="test",
            caption=caption,
            runtime=runtime,
            output=OutputSettings(out_dir=str(workdir / "local"), run=f"local-{time.time_ns()}"),
        ),
        show_progress=False,
    )
    results = {"local_images_per_s": local.images_per_second, "local_wall_s": local.wall_seconds}
    cores = os.cpu_count() or 1
    for workers in (1, 2):
        data = workdir / f"redis-{workers}"
        data.mkdir()
        server = RedisServer(data).start()
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // workers))}
        procs = [
            subprocess.Popen(
                [
                    ROCOCAP,
                    "worker",
                    "--gpus",
                    "cpu",
                    "--model",
                    str(model),
                    "--batch-size",
                    str(batch),
                    "--redis-url",
                    server.url,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
            )
            for _ in range(workers)
        ]
        try:
            wait_until(lambda url=server.url, n=workers: len(_online(url)) >= n, 60, "workers online")
            run = f"dist{workers}"
            started = time.perf_counter()
            enqueue(
                EnqueueSettings(
                    redis_url=server.url,
                    dataset=str(dataset),
                    split="test",
                    run=run,
                    caption=caption,
                    chunk_size=batch,
                )
            )
            Collector(
                CollectorSettings(
                    redis_url=server.url,
                    out_dir=str(workdir / "dist"),
                    checkpoint_every=25,
                    run=run,
                    until_done=True,
                ),
                server.client(),
            ).serve()
            wall = time.perf_counter() - started
            results[f"distributed_{workers}w_images_per_s"] = images / wall
            results[f"distributed_{workers}w_wall_s"] = wall
            results[f"distributed_{workers}w_vs_local"] = (images / wall) / local.images_per_second
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=30)
            server.stop()
    return results


def _online(url: str) -> list[str]:
    from rococap.celery_app import make_celery_app
    from rococap.status import workers_online

    return workers_online(make_celery_app(url), timeout_s=0.5)


def enqueue_rate(workdir: Path, ids: int, chunk: int) -> dict:
    dataset = workdir / f"ids-{ids}"
    if not (dataset / "data").exists():
        tiny_png = png_bytes(synthetic_image(0, 32, 32))
        write_split(dataset, "test", [Row(f"ROCOv2_2023_test_{n:06d}", tiny_png) for n in range(1, ids + 1)])
    data = workdir / "redis-enqueue"
    data.mkdir()
    server = RedisServer(data).start()
    try:
        settings = EnqueueSettings(
            redis_url=server.url,
            dataset=str(dataset),
            split="test",
            run="enqueue-bench",
            caption=CaptionSettings(model="bench-model"),
            chunk_size=chunk,
        )
        started = time.perf_counter()
        result = enqueue(settings)
        wall = time.perf_counter() - started
        return {
            "enqueue_ids": result.sent_ids,
            "enqueue_tasks": result.tasks,
            "enqueue_wall_s": wall,
            "enqueue_ids_per_s": result.sent_ids / wall,
        }
    finally:
        server.stop()


def collector_rate(workdir: Path, rows: int) -> dict:
    data = workdir / "redis-collect"
    data.mkdir()
    server = RedisServer(data).start()
    try:
        client = server.client()
        settings = EnqueueSettings(
            redis_url=server.url,
            dataset="unused",
            split="test",
            run="collect-bench",
            caption=CaptionSettings(model="bench-model"),
            chunk_size=8,
        )
        from rococap.producer.enqueue import register_run

        register_run(client, settings)
        ids = [f"ROCOv2_2023_test_{n:06d}" for n in range(1, rows + 1)]
        client.sadd(RunKeys("collect-bench").enqueued, *ids)
        caption = "The image shows an axial CT scan of the chest with a nodule in the right upper lobe. " * 4
        for start in range(0, rows, 1000):
            records = [
                CaptionRecord(
                    image_id,
                    "ref",
                    caption,
                    0.5,
                    "bench-model",
                    "2026-01-01T00:00:00+00:00",
                    "test",
                    96,
                    8,
                    "bench",
                )
                for image_id in ids[start : start + 1000]
            ]
            push_records(client, "collect-bench", records, None)
        collector = Collector(
            CollectorSettings(
                redis_url=server.url,
                out_dir=str(workdir / "collect"),
                checkpoint_every=25,
                run="collect-bench",
                until_done=True,
            ),
            client,
        )
        started = time.perf_counter()
        collector.serve()
        wall = time.perf_counter() - started
        return {"collector_rows": rows, "collector_wall_s": wall, "collector_rows_per_s": rows / wall}
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--enqueue-ids", type=int, default=60_000)
    parser.add_argument("--collect-rows", type=int, default=20_000)
    parser.add_argument("--skip", default="", help="comma-separated: pipeline,enqueue,collector")
    args = parser.parse_args()
    os.chdir(REPO_ROOT)
    workdir = Path(tempfile.mkdtemp(prefix="rococap-bench-"))
    model, dataset = prepare(workdir, args.images)
    skip = set(args.skip.split(","))
    results = {
        "machine": machine_line(),
        "images": args.images,
        "batch_size": args.batch_size,
        "tokens": args.tokens,
    }
    if "pipeline" not in skip:
        results.update(
            local_vs_distributed(workdir, model, dataset, args.images, args.batch_size, args.tokens)
        )
    if "enqueue" not in skip:
        results.update(enqueue_rate(workdir, args.enqueue_ids, args.batch_size))
    if "collector" not in skip:
        results.update(collector_rate(workdir, args.collect_rows))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
