"""Selecting image ids from a ROCOv2-format split, and clear errors for bad selections."""

from __future__ import annotations

import pytest

from rococap.dataset import SplitSource, read_ids_file
from rococap.errors import DatasetError
from tests.fixtures.rocov2 import Row, png_bytes, synthetic_image, synthetic_rows, write_split


def test_limit_takes_the_first_ids_in_split_order_across_shards(rocov2_folder):
    source = SplitSource.open(str(rocov2_folder), "test")
    assert len(source) == 40
    assert source.select(limit=3) == [f"ROCOv2_2023_test_{n:06d}" for n in (1, 2, 3)]
    assert source.select()[-1] == "ROCOv2_2023_test_000040"


def test_ids_file_selects_those_ids_in_file_order(rocov2_folder, tmp_path):
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text(
        "# wanted\nROCOv2_2023_test_000030\n\nROCOv2_2023_test_000002\nROCOv2_2023_test_000030\n"
    )
    source = SplitSource.open(str(rocov2_folder), "test")
    assert source.select(ids=read_ids_file(str(ids_file))) == [
        "ROCOv2_2023_test_000030",
        "ROCOv2_2023_test_000002",
    ]


def test_rows_fetch_bytes_and_caption_by_id(rocov2_folder):
    source = SplitSource.open(str(rocov2_folder), "test")
    rows = source.rows(["ROCOv2_2023_test_000033", "ROCOv2_2023_test_000001"])
    assert [row.image_id for row in rows] == ["ROCOv2_2023_test_000033", "ROCOv2_2023_test_000001"]
    assert rows[0].caption.startswith("CT scan number 33 ")
    assert rows[0].image_bytes[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_ids_are_named(rocov2_folder):
    source = SplitSource.open(str(rocov2_folder), "test")
    with pytest.raises(DatasetError, match="2 image id.*not in split 'test'.*ROCOv2_2023_valid_000001, nope"):
        source.select(ids=["ROCOv2_2023_test_000001", "ROCOv2_2023_valid_000001", "nope"])


def test_unknown_split_lists_the_available_ones(rocov2_folder):
    with pytest.raises(DatasetError, match="unknown split 'train'.*available splits are test, validation"):
        SplitSource.open(str(rocov2_folder), "train")


def test_missing_dataset_folder_is_named(tmp_path):
    with pytest.raises(DatasetError, match=f"dataset folder {tmp_path}/absent does not exist"):
        SplitSource.open(str(tmp_path / "absent"), "test")


def test_folder_without_parquet_files_says_what_is_expected(tmp_path):
    with pytest.raises(DatasetError, match="has no data/<split>-\\*.parquet files"):
        SplitSource.open(str(tmp_path), "test")


def test_hub_dataset_offline_gives_a_fix():
    with pytest.raises(DatasetError, match="cannot load dataset 'eltorio/ROCOv2-radiology'.*--dataset DIR"):
        SplitSource.open("eltorio/ROCOv2-radiology", "test")


def test_repeated_ids_and_null_captions(tmp_path):
    rows = synthetic_rows("test", 3)
    rows.append(Row("ROCOv2_2023_test_000002", png_bytes(synthetic_image(99)), caption="duplicate"))
    rows.append(Row("ROCOv2_2023_test_000004", png_bytes(synthetic_image(4)), caption=None, cui=None))
    write_split(tmp_path, "test", rows)
    source = SplitSource.open(str(tmp_path), "test")
    assert source.select() == [f"ROCOv2_2023_test_{n:06d}" for n in (1, 2, 3, 4)]
    assert source.rows(["ROCOv2_2023_test_000002"])[0].caption != "duplicate"
    assert source.rows(["ROCOv2_2023_test_000004"])[0].caption == ""


def test_empty_ids_file_is_an_error(tmp_path):
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n# nothing\n")
    with pytest.raises(DatasetError, match="holds no image ids"):
        read_ids_file(str(ids_file))
