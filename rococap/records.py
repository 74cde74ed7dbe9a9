"""Result records: one per image, either a caption or a failure. CSV rows and JSON alike."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone

# The seed's columns come first, in the seed's order; rococap's own follow.
SEED_COLUMNS = (
    "image_id",
    "original_caption",
    "generated_caption",
    "processing_time_sec",
    "model",
    "timestamp",
    "split",
)


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class CaptionRecord:
    image_id: str
    original_caption: str
    generated_caption: str
    processing_time_sec: float
    model: str
    timestamp: str
    split: str
    generated_tokens: int
    batch_size: int
    worker: str

    kind = "caption"

    def to_row(self) -> list[str]:
        return [_cell(getattr(self, name)) for name in column_names(CaptionRecord)]

    def to_json(self) -> dict:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class FailureRecord:
    image_id: str
    error: str
    attempts: int
    timestamp: str
    split: str
    model: str
    worker: str

    kind = "failure"

    def to_row(self) -> list[str]:
        return [_cell(getattr(self, name)) for name in column_names(FailureRecord)]

    def to_json(self) -> dict:
        return {"kind": self.kind, **asdict(self)}


Record = CaptionRecord | FailureRecord


def column_names(record_type: type) -> tuple[str, ...]:
    return tuple(field.name for field in fields(record_type))


def record_from_json(data: dict) -> Record:
    """Rebuild a record sent as JSON (e.g. through a Redis stream); unknown keys are ignored."""
    record_type = FailureRecord if data.get("kind") == FailureRecord.kind else CaptionRecord
    values = {name: data[name] for name in column_names(record_type)}
    return record_type(**values)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


assert column_names(CaptionRecord)[: len(SEED_COLUMNS)] == SEED_COLUMNS
