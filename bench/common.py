"""Shared setup for benchmarks: a tiny model and a synthetic ROCOv2-format dataset in a temp folder."""

from __future__ import annotations

import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.fixtures.rocov2 import synthetic_rows, write_split  # noqa: E402
from tests.fixtures.tiny_model import build_tiny_qwen2vl  # noqa: E402


def prepare(workdir: Path, images: int) -> tuple[Path, Path]:
    """Build (once) the tiny model and a `test` split of `images` synthetic images under workdir."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_CACHE", str(workdir / "hf-cache"))
    model = workdir / "tiny-model"
    if not (model / "config.json").exists():
        build_tiny_qwen2vl(model)
    dataset = workdir / f"dataset-{images}"
    if not (dataset / "data").exists():
        write_split(dataset, "test", synthetic_rows("test", images), shards=max(1, images // 2000))
    return model, dataset


def machine_line() -> str:
    return (
        f"{datetime.now(timezone.utc):%Y-%m-%d}, {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}"
    )
