"""`rococap run` end to end through the real console script."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import SHARED_DATA, rococap_cli
from tests.fixtures.rocov2 import Row, synthetic_rows, write_split

TINY_ARGS = ("--max-new-tokens", "8", "--device", "cpu")


def read_ids(path: Path) -> list[str]:
    return pd.read_csv(path, dtype=str, keep_default_na=False)["image_id"].tolist() if path.exists() else []


def test_run_writes_the_files_with_every_id_once(rocov2_folder, tiny_model, tmp_path):
    result = rococap_cli(
        "run",
        "test",
        "--dataset",
        str(rocov2_folder),
        "--model",
        str(tiny_model),
        "--limit",
        "20",
        "--out",
        str(tmp_path),
        "--batch-size",
        "4",
        *TINY_ARGS,
    )
    assert result.returncode == 0, result.stderr
    run_folder = tmp_path / "test"
    frame = pd.read_csv(run_folder / "medical_captions_test.csv", keep_default_na=False)
    frame = frame.sort_values("image_id").reset_index(drop=True)
    assert sorted(frame["image_id"]) == [f"ROCOv2_2023_test_{n:06d}" for n in range(1, 21)]
    assert set(frame["split"]) == {"test"} and set(frame["model"]) == {str(tiny_model)}
    assert frame["original_caption"][0] == "CT scan number 1 of the chest, showing a lesion."
    assert pd.to_datetime(frame["timestamp"]).dt.tz is not None
    assert read_ids(run_folder / "failed_test.csv") == []
    manifest = json.loads((run_folder / "run.json").read_text())
    assert manifest["counts"] == {"captioned": 20, "failed": 0, "selected": 20}
    assert manifest["caption_settings"]["max_new_tokens"] == 8
    assert manifest["runtime"]["dtype"] == "float32" and "transformers" in manifest["versions"]
    assert "20 captioned, 0 failed" in result.stdout and "images/s" in result.stdout

    again = rococap_cli(
        "run",
        "test",
        "--dataset",
        str(rocov2_folder),
        "--model",
        str(tiny_model),
        "--limit",
        "25",
        "--out",
        str(tmp_path),
        *TINY_ARGS,
    )
    assert again.returncode == 0, again.stderr
    assert "20 already done" in again.stdout
    assert len(read_ids(run_folder / "medical_captions_test.csv")) == 25


def test_corrupt_images_become_failed_rows_and_retry_failed_retries_them(tiny_model, tmp_path):
    rows = synthetic_rows("test", 5)
    rows[1] = Row(rows[1].image_id, b"\xff\xd8\xff\xe0 truncated jpeg", "bad")
    rows[3] = Row(rows[3].image_id, None, None)
    write_split(tmp_path / "ds", "test", rows)
    args = (
        "run",
        "test",
        "--dataset",
        str(tmp_path / "ds"),
        "--model",
        str(tiny_model),
        "--out",
        str(tmp_path / "out"),
        *TINY_ARGS,
    )
    assert rococap_cli(*args).returncode == 0
    failed = pd.read_csv(tmp_path / "out/test/failed_test.csv")
    assert failed["image_id"].tolist() == [rows[1].image_id, rows[3].image_id]
    assert "corrupt or truncated" in failed["error"][0] or "unrecognised" in failed["error"][0]
    assert "null image" in failed["error"][1]
    assert len(read_ids(tmp_path / "out/test/medical_captions_test.csv")) == 3

    retried = rococap_cli(*args, "--retry-failed")
    assert retried.returncode == 0, retried.stderr
    assert "2 images, 0 captioned, 2 failed" in retried.stdout
    assert len(read_ids(tmp_path / "out/test/failed_test.csv")) == 2


def test_kill_9_mid_run_then_rerun_gives_every_id_exactly_once(tiny_model, tmp_path):
    write_split(tmp_path / "ds", "test", synthetic_rows("test", 120))
    args = [
        "run",
        "test",
        "--dataset",
        str(tmp_path / "ds"),
        "--model",
        str(tiny_model),
        "--out",
        str(tmp_path / "out"),
        "--batch-size",
        "2",
        "--checkpoint-every",
        "3",
        "--max-new-tokens",
        "48",
        "--device",
        "cpu",
    ]
    captions = tmp_path / "out/test/medical_captions_test.csv"
    script = Path(sys.executable).with_name("rococap")
    process = subprocess.Popen(
        [str(script), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy()
    )
    try:
        deadline = time.monotonic() + 120
        while len(read_ids(captions)) < 9 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.poll() is None, "the run finished before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    partial = read_ids(captions)
    assert 9 <= len(partial) < 120
    rerun = rococap_cli(*args, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    final = read_ids(captions)
    assert sorted(final) == [f"ROCOv2_2023_test_{n:06d}" for n in range(1, 121)]
    assert final[: len(partial)] == partial


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--dataset", "{missing}"), "dataset folder .*absent does not exist"),
        (("--split-name", "train"), "unknown split 'train'.*available splits are test, validation"),
        (("--model", "{missing}"), "model folder .*absent does not exist"),
        (("--batch-size", "0"), "Invalid value for '--batch-size'"),
        (("--run", "../escape"), "invalid run name"),
        (("--ids", "{ids}"), "1 image id.*not in split 'test'.*ROCOv2_2023_test_999999"),
    ],
)
def test_bad_input_is_one_line_and_non_zero(rocov2_folder, tiny_model, tmp_path, extra, message):
    import re

    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("ROCOv2_2023_test_000001\nROCOv2_2023_test_999999\n")
    values = {"missing": str(tmp_path / "absent"), "ids": str(ids_file)}
    extra = [value.format(**values) for value in extra]
    split = "test"
    if extra[0] == "--split-name":
        split, extra = extra[1], []
    base = {"--dataset": str(rocov2_folder), "--model": str(tiny_model), "--out": str(tmp_path / "out")}
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        base[flag] = value
    args = ["run", split, *[item for pair in base.items() for item in pair], *TINY_ARGS]
    result = rococap_cli(*args)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert re.search(message, result.stderr), result.stderr


def test_help_shows_defaults_and_environment_variables():
    result = rococap_cli("run", "--help")
    assert result.returncode == 0
    for text in (
        "ROCOCAP_MODEL",
        "Qwen/Qwen2-VL-2B-Instruct",
        "ROCOCAP_BATCH_SIZE",
        "default: 256",
        "ROCOCAP_MAX_PIXELS",
        "ROCOCAP_CHECKPOINT_EVERY",
        "default: 25",
        "eltorio/ROCOv2-radiology",
    ):
        assert text in result.stdout


@pytest.mark.shared_data
@pytest.mark.skipif(not (SHARED_DATA / "images").is_dir(), reason="../shared/data/images is not present")
def test_real_radiology_images_end_to_end(tiny_model, tmp_path):
    """Real chest X-rays (8-bit) and CT/MR slices (16-bit) through the real CLI."""
    references = pd.read_csv(SHARED_DATA / "rocov2/rocov2_test_image_id_caption_cui.csv", nrows=10)
    images = sorted((SHARED_DATA / "images").glob("*.png"))
    rows = [
        Row(
            image_id=references["image_id"][index],
            image=path.read_bytes(),
            caption=references["caption"][index],
            cui=references["cui"][index].split(";"),
        )
        for index, path in enumerate(images)
    ]
    write_split(tmp_path / "ds", "test", rows)
    result = rococap_cli(
        "run",
        "test",
        "--dataset",
        str(tmp_path / "ds"),
        "--model",
        str(tiny_model),
        "--out",
        str(tmp_path / "out"),
        *TINY_ARGS,
    )
    assert result.returncode == 0, result.stderr
    frame = pd.read_csv(tmp_path / "out/test/medical_captions_test.csv", keep_default_na=False)
    by_id = frame.set_index("image_id")["original_caption"].to_dict()
    assert by_id == {row.image_id: row.caption for row in rows}
    assert read_ids(tmp_path / "out/test/failed_test.csv") == []
