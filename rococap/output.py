"""The checkpointed CSV of a run: one writer for the local loop and the collector alike.

Layout of `<out>/<run>/`:
  medical_captions_<split>.csv  one row per captioned image (the seed's columns first)
  failed_<split>.csv            one row per image that could not be captioned, with the reason
  run.json                      manifest: settings, counts, timings, versions (replaced atomically)

Rows are buffered and appended, flushed and fsynced every `checkpoint_every` rows. On open,
a torn last record (a kill mid-write) is cut off, and the ids in both files are the run's
"done" set: a record for an id already done is dropped, so every id is written exactly once.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from rococap.errors import OutputError
from rococap.records import CaptionRecord, FailureRecord, Record, column_names, utc_now_iso
from rococap.settings import validate_run_name

MANIFEST_NAME = "run.json"
# Manifest keys that must match for a run to be continued.
IDENTITY_KEYS = ("split", "caption_settings")


def captions_file_name(split: str) -> str:
    return f"medical_captions_{split}.csv"


def failed_file_name(split: str) -> str:
    return f"failed_{split}.csv"


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder, fsync, then os.replace."""
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_current_umask())  # like a file opened with open(), not mkstemp's 0600
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def complete_records(text: str, width: int) -> tuple[list[list[str]], int]:
    """Parse CSV text; return its complete records and the length of the text they span.

    A record is complete when it ends with a newline and has `width` fields; parsing stops at the
    first incomplete one (a torn write at the end of the file).
    """
    consumed = 0
    line_ends: list[int] = []

    def lines():
        nonlocal consumed
        for line in io.StringIO(text, newline=""):
            consumed += len(line)
            line_ends.append(consumed)
            yield line

    records: list[list[str]] = []
    good_length = 0
    reader = csv.reader(lines(), strict=True)
    try:
        for record in reader:
            ends_cleanly = text[line_ends[-1] - 1 : line_ends[-1]] == "\n"
            if len(record) != width or not ends_cleanly:
                break
            records.append(record)
            good_length = line_ends[-1]
    except csv.Error:
        pass
    return records, good_length


class CsvTable:
    """An append-only CSV file with a fixed header, repaired on open."""

    def __init__(self, path: Path, columns: tuple[str, ...]):
        self.path = path
        self.columns = columns
        self.rows: list[list[str]] = []

    def open(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            atomic_write_text(self.path, _format_rows([list(self.columns)]))
            return
        text = self.path.read_bytes().decode("utf-8", errors="replace")
        records, good_length = complete_records(text, len(self.columns))
        if not records or tuple(records[0]) != self.columns:
            found = ",".join(records[0]) if records else "no header"
            raise OutputError(
                f"{self.path} does not have rococap's columns (found {found[:120]}): "
                "move it away or choose another --out or --run"
            )
        if good_length != len(text):
            with open(self.path, "r+b") as handle:
                handle.truncate(len(text[:good_length].encode("utf-8")))
                os.fsync(handle.fileno())
        self.rows = records[1:]

    def ids(self) -> list[str]:
        return [row[0] for row in self.rows]

    def append(self, rows: list[list[str]]) -> None:
        if not rows:
            return
        with open(self.path, "a", encoding="utf-8", newline="") as handle:
            handle.write(_format_rows(rows))
            handle.flush()
            os.fsync(handle.fileno())

    def rewrite_without(self, image_ids: set[str]) -> int:
        kept = [row for row in self.rows if row[0] not in image_ids]
        removed = len(self.rows) - len(kept)
        if removed:
            atomic_write_text(self.path, _format_rows([list(self.columns), *kept]))
            self.rows = kept
        return removed


def _format_rows(rows: Iterable[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


class RunOutput:
    """The files of one run of one split; see the module docstring."""

    def __init__(self, out_dir: str | Path, run: str, split: str, checkpoint_every: int):
        self.folder = Path(out_dir) / validate_run_name(run)
        self.run = run
        self.split = split
        self.checkpoint_every = checkpoint_every
        self.captions = CsvTable(self.folder / captions_file_name(split), column_names(CaptionRecord))
        self.failed = CsvTable(self.folder / failed_file_name(split), column_names(FailureRecord))
        self.manifest_path = self.folder / MANIFEST_NAME
        self.manifest: dict = {}
        self.done: set[str] = set()
        self.captioned_count = 0
        self.failed_count = 0
        self._pending: list[Record] = []
        self._started_monotonic = time.monotonic()
        self._rows_this_session = 0

    # -- opening and resuming -------------------------------------------------------------
    def open(self, manifest: dict) -> None:
        """Create or resume the run; refuse one made with other caption settings."""
        self._make_folder()
        previous = self._read_manifest()
        for key in IDENTITY_KEYS:
            if previous and key in previous and previous[key] != manifest.get(key):
                raise OutputError(_mismatch_message(self.folder, key, previous[key], manifest.get(key)))
        self.captions.open()
        self.failed.open()
        captioned_ids = self.captions.ids()
        self.done = set(captioned_ids)
        self.done.update(image_id for image_id in self.failed.ids() if image_id not in self.done)
        self.captioned_count = len(set(captioned_ids))
        self.failed_count = len(self.done) - self.captioned_count
        self.manifest = {**previous, **manifest}
        self.manifest.setdefault("created_at", utc_now_iso())
        self._write_manifest()

    def _make_folder(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.folder, prefix=".write-test-"):
                pass
        except OSError as exc:
            raise OutputError(
                f"cannot write to output folder {self.folder} ({exc.strerror}): choose a writable --out"
            ) from None

    def _read_manifest(self) -> dict:
        if not self.manifest_path.exists():
            return {}
        try:
            return json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise OutputError(
                f"cannot read {self.manifest_path} ({exc}): move it away or choose another --run"
            ) from None

    def retry_failed(self, image_ids: Iterable[str]) -> int:
        """Remove these ids from the failed file so that they are captioned again."""
        wanted = set(image_ids)
        removed_ids = {image_id for image_id in self.failed.ids() if image_id in wanted}
        self.failed.rewrite_without(removed_ids)
        self.done -= removed_ids - set(self.captions.ids())
        self.failed_count -= len(removed_ids)
        return len(removed_ids)

    # -- writing --------------------------------------------------------------------------
    def add(self, record: Record) -> bool:
        """Buffer a record; False (and nothing written) if its id is already done."""
        if record.image_id in self.done:
            return False
        self.done.add(record.image_id)
        self._pending.append(record)
        if isinstance(record, CaptionRecord):
            self.captioned_count += 1
        else:
            self.failed_count += 1
        if len(self._pending) >= self.checkpoint_every:
            self.checkpoint()
        return True

    @property
    def pending(self) -> int:
        return len(self._pending)

    def checkpoint(self) -> None:
        """Append buffered rows to both files, fsync them, then replace run.json."""
        captions = [record.to_row() for record in self._pending if isinstance(record, CaptionRecord)]
        failures = [record.to_row() for record in self._pending if isinstance(record, FailureRecord)]
        self.captions.append(captions)
        self.failed.append(failures)
        self._rows_this_session += len(self._pending)
        self._pending.clear()
        self._write_manifest()

    def update_manifest(self, **values) -> None:
        self.manifest.update(values)

    def _write_manifest(self) -> None:
        elapsed_s = time.monotonic() - self._started_monotonic
        self.manifest["counts"] = {
            **self.manifest.get("counts", {}),
            "captioned": self.captioned_count,
            "failed": self.failed_count,
        }
        self.manifest["updated_at"] = utc_now_iso()
        self.manifest["last_session"] = {
            "rows_written": self._rows_this_session,
            "elapsed_s": round(elapsed_s, 3),
            "rows_per_s": round(self._rows_this_session / elapsed_s, 3) if elapsed_s > 0 else None,
        }
        atomic_write_text(self.manifest_path, json.dumps(self.manifest, indent=2, sort_keys=True) + "\n")


def _mismatch_message(folder: Path, key: str, before, now) -> str:
    if isinstance(before, dict) and isinstance(now, dict):
        changed = [
            f"{name}: {before.get(name)!r} -> {now.get(name)!r}"
            for name in sorted(set(before) | set(now))
            if before.get(name) != now.get(name)
        ]
        detail = "; ".join(changed)
    else:
        detail = f"{before!r} -> {now!r}"
    return (
        f"run folder {folder} was made with other settings ({key}: {detail}): "
        "use the same settings to resume it, or another --run name for a new run"
    )


def read_done_ids(out_dir: str | Path, run: str, split: str) -> set[str]:
    """Ids already in a run folder's two CSVs, read without touching the files."""
    folder = Path(out_dir) / validate_run_name(run)
    done: set[str] = set()
    for path, columns in (
        (folder / captions_file_name(split), column_names(CaptionRecord)),
        (folder / failed_file_name(split), column_names(FailureRecord)),
    ):
        if path.exists():
            records, _ = complete_records(path.read_bytes().decode("utf-8", errors="replace"), len(columns))
            done.update(record[0] for record in records[1:])
    return done
