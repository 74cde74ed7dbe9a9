"""The captioner on the tiny model: batched equals one-by-one, failures stay per image."""

from __future__ import annotations

import pytest
import torch

from rococap.batch import caption_rows
from rococap.captioner import Captioner
from rococap.dataset import ImageRow
from rococap.errors import ModelError
from rococap.images import prepare_image
from rococap.records import CaptionRecord, FailureRecord
from rococap.settings import CaptionSettings, RuntimeSettings
from tests.fixtures.rocov2 import png_bytes, synthetic_image

SIZES = [(64, 64), (200, 90), (90, 200), (150, 150), (300, 120), (56, 300), (120, 64), (77, 133)]


@pytest.fixture(scope="module")
def captioner(tiny_model) -> Captioner:
    settings = CaptionSettings(model=str(tiny_model), max_new_tokens=12)
    return Captioner.load(settings, RuntimeSettings(device="cpu", dtype="float32"))


@pytest.fixture(scope="module")
def images():
    return [
        prepare_image(png_bytes(synthetic_image(index, *size)), 56 * 56, 28 * 28 * 16384)
        for index, size in enumerate(SIZES)
    ]


def test_batched_greedy_output_equals_one_by_one(captioner, images):
    batched = captioner.caption(images)
    single = [captioner.caption([image])[0] for image in images]
    assert [c.text for c in batched] == [c.text for c in single]
    assert [c.generated_tokens for c in batched] == [c.generated_tokens for c in single]
    assert len({c.text for c in batched}) > 1, "captions should depend on the image"


def test_each_caption_reports_tokens_and_time(captioner, images):
    captions = captioner.caption(images[:3])
    assert all(0 < c.generated_tokens <= 12 for c in captions)
    assert all(c.seconds > 0 for c in captions)


def rows_with_broken_neighbours() -> list[ImageRow]:
    good = [ImageRow(f"good{n}", png_bytes(synthetic_image(n)), "ref") for n in range(3)]
    broken = [ImageRow("empty", b"", "ref"), ImageRow("garbage", b"not an image at all", "ref")]
    return [good[0], broken[0], good[1], broken[1], good[2]]


def test_bad_images_fail_alone_and_their_batch_is_captioned(captioner):
    records = caption_rows(rows_with_broken_neighbours(), captioner, split="test", worker="w", batch_size=8)
    by_id = {record.image_id: record for record in records}
    assert len(records) == 5
    assert {i for i, r in by_id.items() if isinstance(r, CaptionRecord)} == {"good0", "good1", "good2"}
    assert "zero bytes" in by_id["empty"].error
    assert "unrecognised image format" in by_id["garbage"].error
    assert all(by_id[f"good{n}"].batch_size == 3 for n in range(3))


class OutOfMemoryAbove:
    """Wraps the real captioner; raises CUDA OOM for batches larger than `limit` images."""

    def __init__(self, inner: Captioner, limit: int):
        self.inner, self.limit, self.settings, self.calls = inner, limit, inner.settings, []

    def caption(self, images):
        self.calls.append(len(images))
        if len(images) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner.caption(images)


def test_out_of_memory_splits_the_batch_until_it_fits(captioner):
    rows = [ImageRow(f"id{n}", png_bytes(synthetic_image(n)), "ref") for n in range(8)]
    flaky = OutOfMemoryAbove(captioner, limit=2)
    records = caption_rows(rows, flaky, split="test", worker="w", batch_size=8)
    assert sorted(r.image_id for r in records) == sorted(r.image_id for r in rows)
    assert all(isinstance(r, CaptionRecord) for r in records)
    assert flaky.calls[0] == 8 and max(flaky.calls[1:]) <= 4


def test_out_of_memory_for_one_image_becomes_a_failed_row(captioner):
    rows = [ImageRow("only", png_bytes(synthetic_image(1)), "ref")]
    records = caption_rows(rows, OutOfMemoryAbove(captioner, limit=0), split="test", worker="w", batch_size=8)
    assert isinstance(records[0], FailureRecord) and "out of GPU memory" in records[0].error


def test_missing_local_model_folder_is_named(tmp_path):
    with pytest.raises(ModelError, match=f"model folder {tmp_path}/absent does not exist"):
        Captioner.load(CaptionSettings(model=str(tmp_path / "absent")), RuntimeSettings(device="cpu"))


def test_folder_without_config_is_named(tmp_path):
    with pytest.raises(ModelError, match="has no config.json"):
        Captioner.load(CaptionSettings(model=str(tmp_path)), RuntimeSettings(device="cpu"))


def test_unreachable_hub_names_the_model_and_the_fixes():
    with pytest.raises(ModelError) as caught:
        Captioner.load(CaptionSettings(model="Qwen/Qwen2-VL-2B-Instruct"), RuntimeSettings(device="cpu"))
    message = str(caught.value)
    assert "'Qwen/Qwen2-VL-2B-Instruct'" in message and "\n" not in message
    for fix in ("HF_HOME", "--model", "HF_HUB_OFFLINE"):
        assert fix in message


def test_cuda_device_without_gpu_is_a_clear_error(tiny_model):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    with pytest.raises(ModelError, match="no CUDA GPU is visible"):
        Captioner.load(CaptionSettings(model=str(tiny_model)), RuntimeSettings(device="cuda"))
