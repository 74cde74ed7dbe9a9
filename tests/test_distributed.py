"""The distributed path against a real redis-server, real `rococap worker` processes and the real collector."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.conftest import rococap_cli
from tests.fixtures.rocov2 import synthetic_rows, write_split
from tests.services import collect_until_done

CAPTION_ARGS = ["--max-new-tokens", "8"]


def frame(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


@pytest.mark.slow
def test_two_workers_and_collector_match_the_local_run_and_resume(
    tiny_model, tmp_path, redis_server, cli_processes
):
    dataset = tmp_path / "ds"
    write_split(dataset, "test", synthetic_rows("test", 30))
    common = ["--dataset", str(dataset), "--model", str(tiny_model), *CAPTION_ARGS]
    url = redis_server.url

    local = rococap_cli(
        "run",
        "test",
        *common,
        "--limit",
        "20",
        "--out",
        str(tmp_path / "local"),
        "--batch-size",
        "4",
        "--device",
        "cpu",
    )
    assert local.returncode == 0, local.stderr

    enqueued = rococap_cli(
        "enqueue",
        "test",
        *common,
        "--limit",
        "20",
        "--chunk-size",
        "4",
        "--redis-url",
        url,
        "--out",
        str(tmp_path / "dist"),
    )
    assert enqueued.returncode == 0, enqueued.stderr
    assert "20 ids sent as 5 tasks" in enqueued.stdout

    for index in range(2):
        cli_processes(
            [
                "--log-level",
                "INFO",
                "worker",
                "--gpus",
                "cpu",
                "--model",
                str(tiny_model),
                "--batch-size",
                "4",
                "--redis-url",
                url,
            ],
            tmp_path / f"worker{index}.log",
        )
    collector = cli_processes(
        collect_until_done(tmp_path / "dist", url, "--checkpoint-every", "3"), tmp_path / "collector.log"
    )
    assert collector.wait(180) == 0, collector.log()

    local_rows = frame(tmp_path / "local/test/medical_captions_test.csv").set_index("image_id")
    dist_rows = frame(tmp_path / "dist/test/medical_captions_test.csv")
    assert dist_rows["image_id"].is_unique
    assert sorted(dist_rows["image_id"]) == sorted(local_rows.index)
    dist_rows = dist_rows.set_index("image_id").loc[local_rows.index]
    assert dist_rows["generated_caption"].tolist() == local_rows["generated_caption"].tolist()
    assert dist_rows["original_caption"].tolist() == local_rows["original_caption"].tolist()
    assert set(dist_rows["worker"]) <= {f"cpu@{host}" for host in [__import__("socket").gethostname()]}
    manifest = json.loads((tmp_path / "dist/test/run.json").read_text())
    assert (
        manifest["caption_settings"]
        == json.loads((tmp_path / "local/test/run.json").read_text())["caption_settings"]
    )

    # status agrees with the files
    status = rococap_cli("status", "--run", "test", "--json", "--redis-url", url)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout.splitlines()[0])
    assert (report["total"], report["done"], report["captioned"], report["failed"], report["queued"]) == (
        20,
        20,
        20,
        0,
        0,
    )
    assert len(report["workers_online"]) == 2

    # the stream holds nothing acknowledged: memory stays bounded
    assert redis_server.client().xlen("rococap:run:test:results") == 0

    # resume: a second enqueue of the same run sends only the missing ids
    again = rococap_cli(
        "enqueue",
        "test",
        *common,
        "--limit",
        "30",
        "--chunk-size",
        "4",
        "--redis-url",
        url,
        "--out",
        str(tmp_path / "dist"),
    )
    assert again.returncode == 0, again.stderr
    assert "20 already done" in again.stdout and "10 ids sent as 3 tasks" in again.stdout
    collector = cli_processes(
        collect_until_done(tmp_path / "dist", url),
        tmp_path / "collector2.log",
    )
    assert collector.wait(180) == 0, collector.log()
    ids = frame(tmp_path / "dist/test/medical_captions_test.csv")["image_id"]
    assert ids.is_unique and len(ids) == 30


def test_enqueue_refuses_other_settings_for_the_same_run(rocov2_folder, tiny_model, redis_server):
    base = [
        "enqueue",
        "test",
        "--dataset",
        str(rocov2_folder),
        "--model",
        str(tiny_model),
        "--limit",
        "2",
        "--redis-url",
        redis_server.url,
    ]
    assert rococap_cli(*base, "--prompt", "first").returncode == 0
    refused = rococap_cli(*base, "--prompt", "second")
    assert refused.returncode == 1
    assert (
        "run 'test' in Redis was created" in refused.stderr
        and "prompt 'first' (asked: 'second')" in refused.stderr
    )


def test_unreachable_redis_is_a_quick_one_line_error(rocov2_folder, tiny_model):
    from tests.services import free_port

    url = f"redis://:secret@127.0.0.1:{free_port()}/0"
    for args in (
        ["enqueue", "test", "--dataset", str(rocov2_folder), "--model", str(tiny_model)],
        ["status"],
        ["collect"],
        ["worker", "--gpus", "cpu", "--model", str(tiny_model)],
    ):
        result = rococap_cli(*args, "--redis-url", url, timeout=60)
        assert result.returncode == 1, (args, result.stderr)
        assert "cannot reach Redis at redis://:***@127.0.0.1" in result.stderr
        assert "secret" not in result.stderr and "Traceback" not in result.stderr


def test_wrong_redis_password_is_named(tmp_path, rocov2_folder):
    from tests.services import RedisServer

    (tmp_path / "r").mkdir()
    server = RedisServer(tmp_path / "r", password="right").start()
    try:
        wrong = server.url.replace(":right@", ":wrong@")
        result = rococap_cli("status", "--redis-url", wrong)
        assert result.returncode == 1
        assert "refused the password" in result.stderr and "wrong" not in result.stderr
    finally:
        server.stop()


def test_worker_plan_pins_one_gpu_per_process():
    result = rococap_cli("worker", "--gpus", "0,1", "--model", "Qwen/Qwen2-VL-2B-Instruct", "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("gpu0@") and "CUDA_VISIBLE_DEVICES=0 " in lines[0]
    assert lines[1].startswith("gpu1@") and "CUDA_VISIBLE_DEVICES=1 " in lines[1]
    assert all(
        "pool=solo" in line and "queue=rococap.caption.Qwen2-VL-2B-Instruct." in line for line in lines
    )


@pytest.mark.parametrize("value", ["0,0", "x", "1,-2", ""])
def test_bad_gpus_value_is_refused(value):
    result = rococap_cli("worker", "--gpus", value, "--dry-run")
    assert result.returncode == 1
    assert "invalid --gpus value" in result.stderr
