"""The checkpointed CSV: schema, quoting, torn-line repair, dedup, resume and refusal."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from rococap.errors import OutputError
from rococap.output import RunOutput
from rococap.records import SEED_COLUMNS, CaptionRecord, FailureRecord

MANIFEST = {"split": "test", "caption_settings": {"model": "m", "prompt": "p", "max_new_tokens": 8}}
AWKWARD_CAPTIONS = [
    'He said "stop", then left',
    "line one\nline two\r\nline three",
    "unicode: µ, ß, 你好, emoji 🩻, tab\tend",
    '=HYPERLINK("http://example.com")',
    "",
    ",,,",
]


def caption(image_id: str, text: str = "a caption", original: str = "orig") -> CaptionRecord:
    return CaptionRecord(
        image_id, original, text, 0.123456, "m", "2026-01-01T00:00:00+00:00", "test", 7, 4, "w"
    )


def failure(image_id: str) -> FailureRecord:
    return FailureRecord(
        image_id, "corrupt or truncated image: x", 1, "2026-01-01T00:00:00+00:00", "test", "m", "w"
    )


def open_output(folder, checkpoint_every=25, manifest=MANIFEST) -> RunOutput:
    output = RunOutput(folder, "run1", "test", checkpoint_every)
    output.open(dict(manifest))
    return output


def test_header_starts_with_the_seed_columns(tmp_path):
    output = open_output(tmp_path)
    output.add(caption("a"))
    output.checkpoint()
    frame = pd.read_csv(output.captions.path)
    assert tuple(frame.columns[: len(SEED_COLUMNS)]) == SEED_COLUMNS
    assert list(frame.columns[len(SEED_COLUMNS) :]) == ["generated_tokens", "batch_size", "worker"]
    assert frame.loc[0, "processing_time_sec"] == pytest.approx(0.1235)


def test_awkward_text_round_trips_exactly_through_pandas(tmp_path):
    output = open_output(tmp_path)
    for index, text in enumerate(AWKWARD_CAPTIONS):
        output.add(caption(f"id{index}", text=text, original=text[::-1]))
    output.checkpoint()
    frame = pd.read_csv(output.captions.path, keep_default_na=False, dtype=str)
    assert frame["generated_caption"].tolist() == AWKWARD_CAPTIONS
    assert frame["original_caption"].tolist() == [text[::-1] for text in AWKWARD_CAPTIONS]


def test_rows_reach_disk_only_at_checkpoints(tmp_path):
    output = open_output(tmp_path, checkpoint_every=3)
    for name in "ab":
        output.add(caption(name))
    assert len(pd.read_csv(output.captions.path)) == 0
    output.add(failure("c"))
    assert len(pd.read_csv(output.captions.path)) == 2
    assert pd.read_csv(output.failed.path)["image_id"].tolist() == ["c"]
    manifest = json.loads(output.manifest_path.read_text())
    assert manifest["counts"] == {"captioned": 2, "failed": 1}


def test_duplicates_are_dropped_across_both_files_and_sessions(tmp_path):
    output = open_output(tmp_path)
    assert output.add(caption("a"))
    assert output.add(failure("b"))
    assert not output.add(caption("a"))
    assert not output.add(caption("b"))
    output.checkpoint()
    reopened = open_output(tmp_path)
    assert reopened.done == {"a", "b"}
    assert not reopened.add(caption("a"))
    reopened.add(caption("c"))
    reopened.checkpoint()
    assert pd.read_csv(reopened.captions.path)["image_id"].tolist() == ["a", "c"]


@pytest.mark.parametrize("cut", ["mid-field", "mid-quoted-newline", "no-final-newline"])
def test_torn_last_record_is_repaired_on_open(tmp_path, cut):
    output = open_output(tmp_path)
    output.add(caption("a"))
    output.add(caption("b", text="two\nlines"))
    output.checkpoint()
    text = output.captions.path.read_text()
    intact = text
    if cut == "mid-field":
        text += 'c,"orig","half a capt'
    elif cut == "mid-quoted-newline":
        text += 'c,orig,"first line\nsecond'
    else:
        text += "c,orig,cap,0.1,m,t,test,1,1"
    output.captions.path.write_text(text)
    reopened = open_output(tmp_path)
    assert output.captions.path.read_text() == intact
    assert reopened.done == {"a", "b"}


def test_changed_caption_settings_are_refused(tmp_path):
    open_output(tmp_path).checkpoint()
    changed = {**MANIFEST, "caption_settings": {**MANIFEST["caption_settings"], "prompt": "other"}}
    with pytest.raises(OutputError, match="made with other settings.*prompt: 'p' -> 'other'.*another --run"):
        open_output(tmp_path, manifest=changed)


def test_retry_failed_removes_only_the_retried_ids(tmp_path):
    output = open_output(tmp_path)
    for name in "xyz":
        output.add(failure(name))
    output.checkpoint()
    reopened = open_output(tmp_path)
    assert reopened.retry_failed(["x", "z", "other"]) == 2
    assert reopened.done == {"y"}
    assert pd.read_csv(reopened.failed.path)["image_id"].tolist() == ["y"]


def test_unwritable_output_folder_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match="cannot write to output folder"):
        open_output(blocker)


def test_foreign_csv_is_not_appended_to(tmp_path):
    (tmp_path / "run1").mkdir()
    (tmp_path / "run1" / "medical_captions_test.csv").write_text("a,b\n1,2\n")
    with pytest.raises(OutputError, match="does not have rococap's columns"):
        open_output(tmp_path)


@pytest.mark.parametrize("name", ["../up", "a/b", "..", ".hidden", ""])
def test_bad_run_names_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match="invalid run name"):
        RunOutput(tmp_path, name, "test", 5)
