"""Frozen settings objects passed to every component.

`CaptionSettings` fixes what a caption means: a run's rows are only comparable when these are
equal, so a run refuses to continue under different ones. `RuntimeSettings` only changes how
fast the captions come (device, dtype, batch size) and may differ between workers of a run.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from rococap.errors import SettingsError

DEFAULT_MODEL = "Qwen/Qwen2-VL-2B-Instruct"
DEFAULT_DATASET = "eltorio/ROCOv2-radiology"
DEFAULT_PROMPT = "Describe this medical image in detail."
DEFAULT_MAX_NEW_TOKENS = 256
# Qwen2-VL-2B-Instruct's own image processor limits (pixels after resizing).
DEFAULT_MIN_PIXELS = 56 * 56
DEFAULT_MAX_PIXELS = 28 * 28 * 16384
DEFAULT_BATCH_SIZE = 8
DEFAULT_CHECKPOINT_EVERY_ROWS = 25
# Workers: retries after transient errors, first retry delay (doubled each retry), deliveries of a
# task that keeps killing its worker, and seconds before an unacknowledged task is redelivered
# (longer than the longest task: model load plus one batch).
DEFAULT_MAX_RETRIES = 3
DEFAULT_RETRY_BASE_DELAY_S = 2.0
DEFAULT_MAX_DELIVERIES = 3
DEFAULT_VISIBILITY_TIMEOUT_S = 3600
DTYPES = ("auto", "float16", "bfloat16", "float32")
ATTENTIONS = ("sdpa", "eager", "flash_attention_2")
# Ids read ahead and ordered by image size, in batches: images of similar size pad less.
SIZE_SORT_WINDOW_BATCHES = 8
DEVICES = ("auto", "cpu", "cuda")

RUN_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class CaptionSettings:
    """What defines a caption: model, prompt, decoding and image resizing."""

    model: str = DEFAULT_MODEL
    prompt: str = DEFAULT_PROMPT
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    min_pixels: int = DEFAULT_MIN_PIXELS
    max_pixels: int = DEFAULT_MAX_PIXELS
    decoding: str = "greedy"

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise SettingsError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.min_pixels < 1 or self.max_pixels < self.min_pixels:
            raise SettingsError(
                f"need 1 <= min_pixels <= max_pixels, got min_pixels={self.min_pixels}, max_pixels={self.max_pixels}"
            )
        if not self.prompt.strip():
            raise SettingsError("the prompt must not be empty")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CaptionSettings:
        return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})


@dataclass(frozen=True)
class RuntimeSettings:
    """How the model runs: these change speed, not the meaning of a caption."""

    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = DEFAULT_BATCH_SIZE
    attention: str = "sdpa"
    sort_by_size: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise SettingsError(f"batch size must be at least 1, got {self.batch_size}")
        if self.dtype not in DTYPES:
            raise SettingsError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.attention not in ATTENTIONS:
            raise SettingsError(f"attention must be one of {', '.join(ATTENTIONS)}, got {self.attention!r}")
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise SettingsError(f"device must be one of {', '.join(DEVICES)} or cuda:N, got {self.device!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class OutputSettings:
    """Where a run's files go and how often they are made durable."""

    out_dir: str = "results"
    run: str = ""
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY_ROWS

    def __post_init__(self) -> None:
        validate_run_name(self.run)
        if self.checkpoint_every < 1:
            raise SettingsError(f"checkpoint-every must be at least 1, got {self.checkpoint_every}")


@dataclass(frozen=True)
class Settings:
    """Everything `rococap run` needs, passed whole to the local pipeline."""

    dataset: str
    split: str
    caption: CaptionSettings = field(default_factory=CaptionSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    output: OutputSettings = field(default_factory=lambda: OutputSettings(run="run"))


def validate_run_name(name: str) -> str:
    """A run name becomes a folder name and a Redis key part: letters, digits, '.', '_', '-'."""
    if not RUN_NAME_PATTERN.match(name) or ".." in name:
        raise SettingsError(
            f"invalid run name {name!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, without '..' or '/'"
        )
    return name
