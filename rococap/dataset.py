"""ROCOv2 split access by image id: open a split once, fetch any image in O(1).

A dataset is a Hugging Face hub id (e.g. eltorio/ROCOv2-radiology) or a local folder in the
hub's layout: `data/<split>-*.parquet` with the features image, image_id, caption and cui.
The split is memory-mapped through the `datasets` Arrow cache, so fetching a row is a slice of
a mapped file, not a parquet decode.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rococap.errors import DatasetError

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("image", "image_id")
SHOWN_IDS_IN_ERRORS = 5


@dataclass(frozen=True)
class ImageRow:
    """One dataset row as the captioner needs it: encoded image bytes, never decoded here."""

    image_id: str
    image_bytes: bytes | None
    caption: str


def is_local_dataset(dataset: str) -> bool:
    """A hub id is `owner/name`; anything else, or anything that exists on disk, is a folder."""
    path = Path(dataset).expanduser()
    return path.exists() or dataset.startswith(("/", ".", "~")) or dataset.count("/") != 1


def local_split_files(folder: Path) -> dict[str, list[str]]:
    """Map split name -> sorted parquet files in `folder/data/` (or `folder/` itself)."""
    splits: dict[str, list[str]] = {}
    for base in (folder / "data", folder):
        for path in sorted(base.glob("*-*.parquet")):
            splits.setdefault(path.name.split("-", 1)[0], []).append(str(path))
        if splits:
            break
    return splits


def _load_local(dataset: str, split: str):
    import datasets

    folder = Path(dataset).expanduser()
    if not folder.is_dir():
        raise DatasetError(
            f"dataset folder {dataset} does not exist: pass --dataset a folder holding "
            "data/<split>-*.parquet, or a Hugging Face dataset id"
        )
    splits = local_split_files(folder)
    if not splits:
        raise DatasetError(
            f"dataset folder {dataset} has no data/<split>-*.parquet files: download the dataset in the "
            "Hugging Face layout (e.g. `hf download --repo-type dataset eltorio/ROCOv2-radiology --local-dir DIR`)"
        )
    if split not in splits:
        raise DatasetError(
            f"unknown split {split!r} in {dataset}: available splits are {', '.join(sorted(splits))}"
        )
    return datasets.load_dataset("parquet", data_files={split: splits[split]}, split=split)


def _load_hub(dataset: str, split: str):
    import datasets

    try:
        return datasets.load_dataset(dataset, split=split)
    except ValueError as exc:
        if "split" in str(exc).lower():
            raise DatasetError(f"unknown split {split!r} in {dataset}: {exc}") from None
        raise DatasetError(f"cannot load dataset {dataset!r}: {exc}") from None
    except Exception as exc:  # network, auth and cache errors all read the same to a user
        raise DatasetError(
            f"cannot load dataset {dataset!r} ({type(exc).__name__}: {' '.join(str(exc).split())[:160]}). "
            "Fix: download it where there is network (`hf download --repo-type dataset "
            f"{dataset} --local-dir DIR`) and pass --dataset DIR, or set HF_HOME to a cache that holds it"
        ) from None


class SplitSource:
    """One split of a dataset, indexed by image_id (first occurrence wins for repeated ids)."""

    def __init__(self, dataset: str, split: str, table_dataset):
        self.dataset = dataset
        self.split = split
        missing = [name for name in REQUIRED_COLUMNS if name not in table_dataset.column_names]
        if missing:
            raise DatasetError(f"split {split!r} of {dataset} lacks the column(s) {', '.join(missing)}")
        self._arrow = table_dataset.with_format("arrow")
        self._has_caption = "caption" in table_dataset.column_names
        self._row_of: dict[str, int] = {}
        for row, image_id in enumerate(table_dataset.data.column("image_id").to_pylist()):
            if image_id is not None:
                self._row_of.setdefault(str(image_id), row)
        self.ids: list[str] = list(self._row_of)

    @classmethod
    def open(cls, dataset: str, split: str) -> SplitSource:
        loaded = _load_local(dataset, split) if is_local_dataset(dataset) else _load_hub(dataset, split)
        return cls(dataset, split, loaded)

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._row_of

    def select(self, limit: int | None = None, ids: Sequence[str] | None = None) -> list[str]:
        """Ids in split order (first `limit`), or the given ids in their order, deduplicated."""
        if ids is not None:
            chosen = list(dict.fromkeys(ids))
            unknown = [image_id for image_id in chosen if image_id not in self._row_of]
            if unknown:
                shown = ", ".join(unknown[:SHOWN_IDS_IN_ERRORS]) + (
                    " ..." if len(unknown) > SHOWN_IDS_IN_ERRORS else ""
                )
                raise DatasetError(
                    f"{len(unknown)} image id(s) not in split {self.split!r} of {self.dataset}: {shown} "
                    "(check the split name and the ids file)"
                )
        else:
            chosen = self.ids
        return chosen[:limit] if limit is not None else list(chosen)

    def rows(self, image_ids: Iterable[str]) -> list[ImageRow]:
        """Fetch rows by id with one Arrow `take` over the mapped split."""
        image_ids = list(image_ids)
        if not image_ids:
            return []
        positions = [self._row_of[image_id] for image_id in image_ids]
        table = self._arrow[positions]
        images = table.column("image").to_pylist()
        captions = table.column("caption").to_pylist() if self._has_caption else [None] * len(image_ids)
        return [
            ImageRow(image_id=image_id, image_bytes=_image_bytes(image), caption=caption or "")
            for image_id, image, caption in zip(image_ids, images, captions, strict=True)
        ]

    def column(self, name: str, image_ids: Iterable[str]) -> list:
        """Values of one column for these ids (None where the split has no such column)."""
        image_ids = [image_id for image_id in image_ids if image_id in self._row_of]
        if name not in self._arrow.column_names:
            return [None] * len(image_ids)
        return self._arrow[[self._row_of[image_id] for image_id in image_ids]].column(name).to_pylist()


def _image_bytes(image) -> bytes | None:
    if image is None:
        return None
    if isinstance(image, dict):
        if image.get("bytes") is not None:
            return image["bytes"]
        path = image.get("path")
        if path and Path(path).is_file():
            return Path(path).read_bytes()
        return None
    return image if isinstance(image, bytes) else None


def read_ids_file(path: str) -> list[str]:
    """One image id per line; blank lines and lines starting with # are ignored."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"cannot read ids file {path}: {exc.strerror}") from None
    ids = [line.strip() for line in text.splitlines()]
    ids = [image_id for image_id in ids if image_id and not image_id.startswith("#")]
    if not ids:
        raise DatasetError(f"ids file {path} holds no image ids (one id per line expected)")
    return ids
