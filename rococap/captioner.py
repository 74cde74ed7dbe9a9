"""Qwen2-VL captioner: loads the model once, captions a batch of images in one generate call."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from rococap.errors import ModelError
from rococap.settings import DEFAULT_MODEL, CaptionSettings, RuntimeSettings


@dataclass(frozen=True)
class Caption:
    """One image's caption: its text, tokens generated, its share of the batch time, the batch size."""

    text: str
    generated_tokens: int
    seconds: float
    batch_size: int


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} asked for, but no CUDA GPU is visible: use --device cpu or auto")
    return device


def resolve_dtype(dtype: str, device: str):
    """float16 on CUDA and float32 on CPU unless asked otherwise."""
    import torch

    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def check_model_source(model: str) -> None:
    """Fail early and clearly for a local model folder that is missing or incomplete."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"model folder {model} has no config.json: point --model at a folder saved with "
                "save_pretrained (config, weights, tokenizer and processor files)"
            )
        return
    looks_like_path = model.startswith(("/", ".", "~")) or model.count("/") != 1 or path.exists()
    if looks_like_path:
        raise ModelError(
            f"model folder {model} does not exist: pass --model an existing folder or a Hugging Face "
            f"model id such as {DEFAULT_MODEL}"
        )


def _load_error(model: str, exc: BaseException) -> ModelError:
    reason = " ".join(str(exc).split())[:200]
    cache = os.environ.get("HF_HOME", "~/.cache/huggingface")
    return ModelError(
        f"cannot load model {model!r} ({type(exc).__name__}: {reason}). It is not in the Hugging Face "
        f"cache ({cache}) and could not be downloaded. Fix: download it where there is network "
        f"(`hf download {model}`) and set HF_HOME to that cache, or pass --model a local folder; "
        "set HF_HUB_OFFLINE=1 to skip network retries"
    )


class Captioner:
    """Holds one Qwen2-VL and its processor; `caption` runs one batched, greedy generate call."""

    def __init__(self, model, processor, settings: CaptionSettings, device: str, extra_generate_kwargs=None):
        self.model = model
        self.processor = processor
        self.settings = settings
        self.device = device
        self._extra_generate_kwargs = dict(extra_generate_kwargs or {})
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": settings.prompt}]}
        ]
        self._image_size = {"shortest_edge": settings.min_pixels, "longest_edge": settings.max_pixels}
        self._prompt_text = processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        tokenizer = processor.tokenizer
        self._stop_ids = {tokenizer.pad_token_id, tokenizer.eos_token_id}
        for token_id in _as_list(getattr(model.generation_config, "eos_token_id", None)):
            self._stop_ids.add(token_id)

    @classmethod
    def load(
        cls, settings: CaptionSettings, runtime: RuntimeSettings, extra_generate_kwargs=None
    ) -> Captioner:
        check_model_source(settings.model)
        import torch
        from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

        device = resolve_device(runtime.device)
        dtype = resolve_dtype(runtime.dtype, device)
        try:
            processor = AutoProcessor.from_pretrained(
                settings.model,
                size={"shortest_edge": settings.min_pixels, "longest_edge": settings.max_pixels},
            )
            model = Qwen2VLForConditionalGeneration.from_pretrained(
                settings.model, dtype=dtype, attn_implementation=runtime.attention
            )
        except (OSError, ValueError, ImportError) as exc:
            raise _load_error(settings.model, exc) from None
        processor.tokenizer.padding_side = "left"
        model.to(device)
        model.eval()
        torch.set_grad_enabled(False)
        return cls(model, processor, settings, device, extra_generate_kwargs)

    def with_settings(self, settings: CaptionSettings) -> Captioner:
        """The same loaded model under another prompt, token limit or pixel limits (same model only)."""
        if settings.model != self.settings.model:
            raise ModelError(f"this captioner holds {self.settings.model!r}, not {settings.model!r}")
        if settings == self.settings:
            return self
        return Captioner(self.model, self.processor, settings, self.device, self._extra_generate_kwargs)

    @property
    def dtype_name(self) -> str:
        return str(self.model.dtype).removeprefix("torch.")

    def caption(self, images: list[Image.Image]) -> list[Caption]:
        """Caption RGB images already sized for Qwen2-VL, in one generate call."""
        if not images:
            return []
        import torch

        started = time.perf_counter()
        inputs = self.processor(
            text=[self._prompt_text] * len(images),
            images=images,
            padding=True,
            return_tensors="pt",
            size=self._image_size,
        ).to(self.device)
        with torch.inference_mode():
            output_ids = self.model.generate(
                **inputs,
                max_new_tokens=self.settings.max_new_tokens,
                do_sample=False,
                **self._extra_generate_kwargs,
            )
        new_ids = output_ids[:, inputs["input_ids"].shape[1] :].tolist()
        texts = self.processor.batch_decode(
            new_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        seconds_each = (time.perf_counter() - started) / len(images)
        return [
            Caption(
                text=text.strip(),
                generated_tokens=self._count_generated(ids),
                seconds=seconds_each,
                batch_size=len(images),
            )
            for text, ids in zip(texts, new_ids, strict=True)
        ]

    def _count_generated(self, ids: list[int]) -> int:
        for position, token_id in enumerate(ids):
            if token_id in self._stop_ids:
                return position
        return len(ids)


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
