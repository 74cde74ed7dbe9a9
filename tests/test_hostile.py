"""Hostile input through the real worker and CLI: broken images, pickle on the queue, leaked passwords."""

from __future__ import annotations

import io
import json
import pickle
import socket

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from rococap.celery_app import CAPTION_TASK_NAME, queue_for_model
from tests.conftest import rococap_cli
from tests.fixtures.rocov2 import Row, png_bytes, synthetic_image, write_split
from tests.services import RedisServer, collect_until_done, wait_until

HOST = socket.gethostname()


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def hostile_rows() -> tuple[list[Row], dict[str, str]]:
    """Rows of every kind of awkward image, and the failure reason expected for the bad ones."""
    gray = synthetic_image(1, 120, 90)
    jpeg = encoded(gray, "JPEG")
    palette = Image.new("P", (64, 64), 0)
    palette.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    raw16 = (128 + np.arange(96 * 80).reshape(80, 96) % 2064).astype(np.uint16)
    images = {
        "truncated_jpeg": (jpeg[: len(jpeg) // 2], "corrupt or truncated"),
        "random_bytes": (np.random.default_rng(0).bytes(3000), "unrecognised image format"),
        "zero_bytes": (b"", "zero bytes"),
        "null_image": (None, "null image"),
        "bomb": (encoded(Image.new("L", (9500, 9500)), "PNG"), "decompression bomb"),
        "aspect_300": (encoded(Image.new("L", (3000, 10)), "PNG"), "aspect ratio"),
        "one_pixel": (encoded(Image.new("L", (1, 1)), "PNG"), None),
        "twelve_px": (encoded(Image.new("L", (12, 12)), "PNG"), None),
        "gray16": (encoded(Image.fromarray(raw16), "PNG"), None),
        "cmyk": (encoded(gray.convert("RGB").convert("CMYK"), "JPEG"), None),
        "palette_alpha": (encoded(palette, "PNG", transparency=0), None),
        "one_bit": (encoded(gray.convert("1"), "PNG"), None),
        "webp": (encoded(gray.convert("RGB"), "WEBP"), None),
        "tiff": (encoded(gray, "TIFF"), None),
        "bmp": (encoded(gray, "BMP"), None),
    }
    rows, reasons = [], {}
    for number, (name, (data, reason)) in enumerate(images.items(), start=1):
        image_id = f"ROCOv2_2023_test_{number:06d}"
        rows.append(Row(image_id, data, caption=f'{name} "quoted", with comma\nand newline =1+1', cui=None))
        if reason:
            reasons[image_id] = reason
    rows.append(
        Row(rows[0].image_id, png_bytes(synthetic_image(99)), caption="a second row with the same id")
    )
    rows.append(Row("ROCOv2_2023_test_000099", png_bytes(synthetic_image(98)), caption=None))
    return rows, reasons


@pytest.mark.slow
def test_hostile_images_through_a_worker_each_captioned_or_failed_with_a_reason(
    tiny_model, tmp_path, redis_server, cli_processes
):
    rows, reasons = hostile_rows()
    write_split(tmp_path / "ds", "test", rows)
    url = redis_server.url
    worker = cli_processes(
        ["worker", "--gpus", "cpu", "--model", str(tiny_model), "--redis-url", url], tmp_path / "worker.log"
    )
    result = rococap_cli(
        "enqueue",
        "test",
        "--dataset",
        str(tmp_path / "ds"),
        "--model",
        str(tiny_model),
        "--max-new-tokens",
        "6",
        "--chunk-size",
        "8",
        "--redis-url",
        url,
    )
    assert result.returncode == 0, result.stderr
    assert "16 selected" in result.stdout  # the repeated id is selected once
    collector = cli_processes(
        collect_until_done(tmp_path / "out", url),
        tmp_path / "collector.log",
    )
    assert collector.wait(150) == 0, collector.log()
    assert worker.process.poll() is None, "the worker crashed"
    captions = pd.read_csv(tmp_path / "out/test/medical_captions_test.csv", dtype=str, keep_default_na=False)
    failed = pd.read_csv(tmp_path / "out/test/failed_test.csv", dtype=str, keep_default_na=False)
    assert set(failed["image_id"]) == set(reasons)
    for image_id, error in zip(failed["image_id"], failed["error"], strict=True):
        assert reasons[image_id] in error, (image_id, error)
    assert len(captions) == 16 - len(reasons) and captions["image_id"].is_unique
    by_id = captions.set_index("image_id")
    assert (
        by_id.loc["ROCOv2_2023_test_000008", "original_caption"]
        == 'twelve_px "quoted", with comma\nand newline =1+1'
    )
    assert by_id.loc["ROCOv2_2023_test_000099", "original_caption"] == ""


@pytest.mark.slow
def test_a_pickled_message_on_the_queue_is_refused_not_executed(
    tiny_model, tmp_path, redis_server, cli_processes
):
    from kombu import Connection, Exchange, Producer, Queue

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    worker = cli_processes(
        [
            "--log-level",
            "INFO",
            "worker",
            "--gpus",
            "cpu",
            "--model",
            str(tiny_model),
            "--redis-url",
            redis_server.url,
        ],
        tmp_path / "worker.log",
    )
    wait_until(lambda: "ready." in worker.log(), 60, "worker ready")
    queue_name = queue_for_model(str(tiny_model))
    with Connection(redis_server.url) as connection:
        producer = Producer(connection.channel())
        queue = Queue(queue_name, Exchange(queue_name), routing_key=queue_name)
        producer.publish(
            pickle.dumps(((Exploit(),), {}, {})),
            routing_key=queue_name,
            declare=[queue],
            content_type="application/x-python-serialize",
            content_encoding="binary",
            headers={
                "task": CAPTION_TASK_NAME,
                "id": "evil-1",
                "lang": "py",
                "argsrepr": "",
                "kwargsrepr": "",
            },
        )
    wait_until(
        lambda: "evil-1" in worker.log() or "disallowed" in worker.log().lower(), 30, "the refusal in the log"
    )
    assert not marker.exists()
    assert "ContentDisallowed" in worker.log() or "disallowed" in worker.log().lower()
    assert worker.process.poll() is None, "the worker must keep running"


@pytest.mark.slow
def test_redis_password_never_appears_in_logs_status_or_run_json(
    tiny_model, rocov2_folder, tmp_path, cli_processes
):
    password = "pw-Very-Secret-42"
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis", password=password).start()
    try:
        url = server.url
        worker = cli_processes(
            [
                "--log-level",
                "DEBUG",
                "worker",
                "--gpus",
                "cpu",
                "--model",
                str(tiny_model),
                "--redis-url",
                url,
            ],
            tmp_path / "worker.log",
        )
        enqueued = rococap_cli(
            "--log-level",
            "DEBUG",
            "enqueue",
            "test",
            "--dataset",
            str(rocov2_folder),
            "--model",
            str(tiny_model),
            "--max-new-tokens",
            "4",
            "--limit",
            "4",
            "--redis-url",
            url,
        )
        assert enqueued.returncode == 0, enqueued.stderr
        collector = cli_processes(
            ["--log-level", "DEBUG", *collect_until_done(tmp_path / "out", url)], tmp_path / "collector.log"
        )
        assert collector.wait(120) == 0, collector.log()
        status = rococap_cli("status", "--redis-url", url)
        outputs = [
            enqueued.stdout,
            enqueued.stderr,
            status.stdout,
            status.stderr,
            worker.log(),
            collector.log(),
            (tmp_path / "out/test/run.json").read_text(),
        ]
        assert "redis://:***@127.0.0.1" in enqueued.stdout
        for text in outputs:
            assert password not in text
        assert "redis_url" not in json.loads((tmp_path / "out/test/run.json").read_text())
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "test", "--batch-size", "-3"], "Invalid value for '--batch-size'"),
        (["enqueue", "test", "--run", "a/../b"], "invalid run name"),
        (["enqueue", "test", "--run", ".."], "invalid run name"),
        (["collect", "--run", "../x"], "invalid run name"),
        (["worker", "--gpus", "gpu0", "--dry-run"], "invalid --gpus value"),
        (["run", "test", "--out", "{file}/results"], "cannot write to output folder"),
    ],
)
def test_bad_command_lines_are_one_line_errors(rocov2_folder, tiny_model, tmp_path, args, message):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    args = [arg.format(file=blocker) for arg in args]
    if args[0] in ("run", "enqueue"):
        args += ["--dataset", str(rocov2_folder), "--model", str(tiny_model), "--limit", "1"]
    result = (
        rococap_cli(*args, "--redis-url", "redis://127.0.0.1:1/0")
        if args[0] in ("enqueue", "collect")
        else rococap_cli(*args)
    )
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("Error")]) == 1
