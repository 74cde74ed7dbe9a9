"""Every speed optimisation keeps greedy output identical to the plain path."""

from __future__ import annotations

import pandas as pd
import pytest

from rococap.captioner import Captioner
from rococap.dataset import SplitSource
from rococap.local import order_by_size, run_local
from rococap.settings import CaptionSettings, OutputSettings, RuntimeSettings, Settings
from tests.fixtures.rocov2 import synthetic_rows, write_split

CAPTION = dict(max_new_tokens=10)


@pytest.fixture(scope="module")
def mixed_sizes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mixed")
    write_split(folder, "test", synthetic_rows("test", 24))
    return folder


def captions(tmp_path, dataset, model, name: str, captioner=None, prefetch=True, **runtime) -> pd.Series:
    caption = CaptionSettings(model=str(model), **CAPTION)
    runtime_settings = RuntimeSettings(device="cpu", batch_size=6, **runtime)
    settings = Settings(
        dataset=str(dataset),
        split="test",
        caption=caption,
        runtime=runtime_settings,
        output=OutputSettings(out_dir=str(tmp_path), run=name),
    )
    run_local(settings, show_progress=False, captioner=captioner, prefetch=prefetch)
    frame = pd.read_csv(tmp_path / name / "medical_captions_test.csv", dtype=str, keep_default_na=False)
    return frame.set_index("image_id")["generated_caption"].sort_index()


def test_size_sorted_batches_give_the_same_captions(tmp_path, mixed_sizes, tiny_model):
    plain = captions(tmp_path, mixed_sizes, tiny_model, "plain", sort_by_size=False)
    ordered = captions(tmp_path, mixed_sizes, tiny_model, "sorted", sort_by_size=True)
    assert len(plain) == 24
    assert ordered.equals(plain)


def test_size_order_groups_similar_images(mixed_sizes):
    source = SplitSource.open(str(mixed_sizes), "test")
    settings = Settings(
        dataset=str(mixed_sizes), split="test", runtime=RuntimeSettings(batch_size=3, sort_by_size=True)
    )
    ordered = order_by_size(source.ids, source, settings)
    assert sorted(ordered) == sorted(source.ids) and ordered != source.ids


def test_sdpa_and_eager_attention_give_the_same_captions(tmp_path, mixed_sizes, tiny_model):
    sdpa = captions(tmp_path, mixed_sizes, tiny_model, "sdpa", attention="sdpa")
    eager = captions(tmp_path, mixed_sizes, tiny_model, "eager", attention="eager")
    assert sdpa.equals(eager)


def test_prefetching_the_next_batch_gives_the_same_captions(tmp_path, mixed_sizes, tiny_model):
    captioner = Captioner.load(
        CaptionSettings(model=str(tiny_model), **CAPTION), RuntimeSettings(device="cpu")
    )
    overlapped = captions(tmp_path, mixed_sizes, tiny_model, "overlap", captioner=captioner, prefetch=True)
    serial = captions(tmp_path, mixed_sizes, tiny_model, "serial", captioner=captioner, prefetch=False)
    assert overlapped.equals(serial)
