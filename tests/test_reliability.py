"""Fault tests: workers, the collector and Redis die mid-run; every id still ends up exactly once."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest

from tests.conftest import rococap_cli
from tests.fixtures.rocov2 import Row, png_bytes, synthetic_image, synthetic_rows, write_split
from tests.services import RedisServer, collect_until_done, wait_until

HOST = socket.gethostname()
pytestmark = pytest.mark.slow


def rows_in(path) -> pd.DataFrame:
    if not path.exists():
        return pd.DataFrame(columns=["image_id"])
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def assert_every_id_once(folder, expected_ids: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    captions = rows_in(folder / "medical_captions_test.csv")
    failed = rows_in(folder / "failed_test.csv")
    all_ids = list(captions["image_id"]) + list(failed["image_id"])
    assert len(all_ids) == len(set(all_ids)), "an id was written twice"
    assert sorted(all_ids) == sorted(expected_ids)
    return captions, failed


def stream_is_drained(client, run: str) -> bool:
    key = f"rococap:run:{run}:results"
    return client.xlen(key) == 0 and client.xpending(key, "collectors")["pending"] == 0


def worker_args(model, url, name, *extra) -> list[str]:
    return [
        "--log-level",
        "INFO",
        "worker",
        "--gpus",
        "cpu",
        "--name",
        name,
        "--model",
        str(model),
        "--redis-url",
        url,
        "--batch-size",
        "4",
        *extra,
    ]


def enqueue(dataset, model, url, count, tokens=64, chunk=4, run="test"):
    result = rococap_cli(
        "enqueue",
        "test",
        "--dataset",
        str(dataset),
        "--model",
        str(model),
        "--limit",
        str(count),
        "--max-new-tokens",
        str(tokens),
        "--chunk-size",
        str(chunk),
        "--redis-url",
        url,
        "--run",
        run,
    )
    assert result.returncode == 0, result.stderr
    return [f"ROCOv2_2023_test_{n:06d}" for n in range(1, count + 1)]


def test_worker_killed_mid_batch_task_goes_to_another_worker(
    tiny_model, tmp_path, redis_server, cli_processes
):
    write_split(tmp_path / "ds", "test", synthetic_rows("test", 24))
    url = redis_server.url
    doomed = cli_processes(
        worker_args(tiny_model, url, "doomed", "--visibility-timeout-s", "4"), tmp_path / "doomed.log"
    )
    wait_until(lambda: "ready." in doomed.log(), 60, "first worker ready")
    ids = enqueue(tmp_path / "ds", tiny_model, url, 24, tokens=96)
    client = redis_server.client()
    wait_until(lambda: client.hlen("rococap:run:test:active") > 0, 60, "a task in progress", interval_s=0.005)
    doomed.kill(signal.SIGKILL)
    cli_processes(
        worker_args(tiny_model, url, "rescuer", "--visibility-timeout-s", "4"), tmp_path / "rescuer.log"
    )
    collector = cli_processes(
        collect_until_done(tmp_path / "out", url),
        tmp_path / "collector.log",
    )
    assert collector.wait(150) == 0, collector.log()
    captions, failed = assert_every_id_once(tmp_path / "out/test", ids)
    assert failed.empty
    assert f"rescuer@{HOST}" in set(captions["worker"])
    assert stream_is_drained(client, "test")


def test_collector_killed_and_restarted_loses_and_repeats_nothing(
    tiny_model, tmp_path, redis_server, cli_processes
):
    write_split(tmp_path / "ds", "test", synthetic_rows("test", 40))
    url = redis_server.url
    cli_processes(worker_args(tiny_model, url, "w1"), tmp_path / "w1.log")
    ids = enqueue(tmp_path / "ds", tiny_model, url, 40, tokens=48)
    collect = [
        "collect",
        "--run",
        "test",
        "--out",
        str(tmp_path / "out"),
        "--redis-url",
        url,
        "--checkpoint-every",
        "2",
    ]
    first = cli_processes(collect, tmp_path / "collector1.log")
    csv_path = tmp_path / "out/test/medical_captions_test.csv"
    wait_until(lambda: len(rows_in(csv_path)) >= 6, 120, "some rows on disk")
    first.kill(signal.SIGKILL)
    partial = len(rows_in(csv_path))
    assert partial < 40
    second = cli_processes([*collect, "--until-done"], tmp_path / "collector2.log")
    assert second.wait(150) == 0, second.log()
    assert_every_id_once(tmp_path / "out/test", ids)
    assert stream_is_drained(redis_server.client(), "test")


def test_redis_restart_mid_run_everyone_reconnects_and_the_run_completes(tiny_model, tmp_path, cli_processes):
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis", appendonly=True).start()
    try:
        write_split(tmp_path / "ds", "test", synthetic_rows("test", 40))
        url = server.url
        cli_processes(
            worker_args(tiny_model, url, "w1", "--visibility-timeout-s", "5", "--retry-base-delay-s", "0.5"),
            tmp_path / "worker.log",
        )
        ids = enqueue(tmp_path / "ds", tiny_model, url, 40, tokens=64)
        collector = cli_processes(
            ["--log-level", "INFO", *collect_until_done(tmp_path / "out", url, "--checkpoint-every", "2")],
            tmp_path / "collector.log",
        )
        wait_until(
            lambda: len(rows_in(tmp_path / "out/test/medical_captions_test.csv")) >= 4, 120, "some rows"
        )
        server.stop()
        time.sleep(3)
        status_down = rococap_cli("status", "--redis-url", url, timeout=30)
        assert status_down.returncode == 1 and "cannot reach Redis" in status_down.stderr
        server.start()
        assert collector.wait(180) == 0, collector.log()
        assert "unreachable" in collector.log()
        assert_every_id_once(tmp_path / "out/test", ids)
        status = rococap_cli("status", "--run", "test", "--json", "--redis-url", url)
        assert status.returncode == 0, status.stderr
        assert '"done": 40' in status.stdout and '"total": 40' in status.stdout
    finally:
        server.stop()


def test_poison_task_is_recorded_as_failed_after_bounded_deliveries(tiny_model, tmp_path, redis_server):
    rows = synthetic_rows("test", 8)
    poison_width = 700  # a width that no other image has after resizing
    rows[4] = Row(rows[4].image_id, png_bytes(synthetic_image(4, poison_width, 56)), "poison")
    write_split(tmp_path / "ds", "test", rows)
    url = redis_server.url
    ids = enqueue(tmp_path / "ds", tiny_model, url, 8, tokens=8, chunk=4)
    collector = subprocess.Popen(
        [sys.executable, "-m", "rococap.cli", *collect_until_done(tmp_path / "out", url)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    crashes = 0
    try:
        deadline = time.monotonic() + 150
        while collector.poll() is None and time.monotonic() < deadline:
            worker = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.fixtures.crashing_worker",
                    url,
                    str(tiny_model),
                    "crashy",
                    str(poison_width),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            while worker.poll() is None and collector.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            if worker.poll() is None:
                worker.terminate()
                worker.wait(timeout=30)
            elif worker.returncode == 137:
                crashes += 1
        assert collector.wait(timeout=10) == 0
    finally:
        for process in (collector,):
            if process.poll() is None:
                process.kill()
    captions, failed = assert_every_id_once(tmp_path / "out/test", ids)
    assert failed["image_id"].tolist() == [rows[4].image_id]  # its task's other ids are captioned
    assert "gave up after 2 deliveries" in failed["error"][0]
    assert 2 <= crashes <= 3
