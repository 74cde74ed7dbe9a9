"""Real Qwen2-VL-2B architecture with random fp16 weights on a GPU: the seed's method vs rococap's batches.

Run on a GPU host (one short script; results as JSON):
  python bench/bench_gpu.py --config-dir ../shared/models/qwen2-vl-2b-instruct --out gpu.json
Smoke-test the same code on CPU with the tiny test model's folder:
  python bench/bench_gpu.py --config-dir TINY_MODEL_DIR --device cpu --dtype float32 --images 8 \
      --batch-sizes 4 --tokens 4 --seed-images 2

Only shapes matter for speed and memory, so the weights are random and generation is forced to exactly
--tokens new tokens (min_new_tokens == max_new_tokens; ROCOv2-style captions run about 90-100 tokens).
The tokenizer is a word-level stand-in whose special tokens sit at the config's ids. Images are
synthetic grayscale pictures of 500-1500 px a side, like ROCOv2's. Measured per configuration:
images/s and peak GPU memory, for (a) the seed's method, one image per generate call, and (b) rococap's
worker path (`rococap.batch.caption_rows`) at each batch size, with the default and a capped max_pixels.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from PIL import Image  # noqa: E402

from rococap.batch import caption_rows  # noqa: E402
from rococap.captioner import Captioner  # noqa: E402
from rococap.dataset import ImageRow  # noqa: E402
from rococap.settings import CaptionSettings  # noqa: E402
from tests.fixtures.tiny_model import QWEN2VL_CHAT_TEMPLATE, QWEN_SPECIAL_TOKENS, as_qwen_tokenizer  # noqa: E402

PROMPT_WORDS = [
    "system",
    "You",
    "are",
    "a",
    "helpful",
    "assistant",
    ".",
    "user",
    "Describe",
    "this",
    "medical",
    "image",
    "in",
    "detail",
]


def stand_in_tokenizer(first_special_id: int):
    """Word-level tokenizer whose Qwen special tokens get ids first_special_id, first_special_id + 1, ..."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {word: index for index, word in enumerate(PROMPT_WORDS)}
    vocab["[UNK]"] = len(vocab)
    for index in range(len(vocab), first_special_id):
        vocab[f"w{index}"] = index
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = as_qwen_tokenizer(tokenizer)
    assert fast.convert_tokens_to_ids("<|endoftext|>") == first_special_id
    return fast


def synthetic_png(index: int, rng) -> bytes:
    width, height = (int(value) for value in rng.integers(500, 1501, size=2))
    base = np.linspace(0, 255, width, dtype=np.float32)[None, :] * np.ones((height, 1), dtype=np.float32)
    noise = rng.normal(0, 25, size=(height, width)).astype(np.float32)
    pixels = np.clip(base * 0.6 + noise + (index % 7) * 10, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config-dir", required=True, help="folder with config.json (+ preprocessor_config.json)"
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--images", type=int, default=128, help="images per batched configuration")
    parser.add_argument("--seed-images", type=int, default=16, help="images for the one-per-call method")
    parser.add_argument("--batch-sizes", default="8,16,32,64")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--capped-max-pixels", type=int, default=512 * 28 * 28)
    parser.add_argument("--attention", default="sdpa")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import torch
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    config = Qwen2VLConfig.from_pretrained(args.config_dir)
    config._attn_implementation = args.attention
    dtype = getattr(torch, args.dtype)
    started = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(args.device):
        model = Qwen2VLForConditionalGeneration(config).to(dtype=dtype)
    model.eval()
    build_s = time.perf_counter() - started
    first_special = config.vision_start_token_id - QWEN_SPECIAL_TOKENS.index("<|vision_start|>")
    tokenizer = stand_in_tokenizer(first_special)
    model.generation_config.eos_token_id = [first_special + 2, first_special]
    model.generation_config.pad_token_id = first_special
    rng = np.random.default_rng(0)
    rows = [ImageRow(f"img{index:05d}", synthetic_png(index, rng), "") for index in range(args.images)]
    results = {
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else args.device,
        "torch": torch.__version__,
        "dtype": args.dtype,
        "tokens": args.tokens,
        "images": args.images,
        "model_parameters": sum(p.numel() for p in model.parameters()),
        "model_build_s": round(build_s, 1),
        "runs": [],
    }

    def measure(label: str, batch_size: int, max_pixels: int, count: int) -> None:
        image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=max_pixels)
        processor = Qwen2VLProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=Qwen2VLVideoProcessor(),
            chat_template=QWEN2VL_CHAT_TEMPLATE,
        )
        settings = CaptionSettings(
            model="qwen2-vl-2b-random", max_new_tokens=args.tokens, max_pixels=max_pixels
        )
        captioner = Captioner(model, processor, settings, args.device, {"min_new_tokens": args.tokens})
        caption_rows(
            rows[:batch_size], captioner, split="test", worker="bench", batch_size=batch_size
        )  # warm-up
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        began = time.perf_counter()
        records = []
        for start in range(0, count, batch_size):
            records += caption_rows(
                rows[start : start + batch_size],
                captioner,
                split="test",
                worker="bench",
                batch_size=batch_size,
            )
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - began
        failed = [record for record in records if record.kind != "caption"]
        peak = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else None
        run = {
            "method": label,
            "batch_size": batch_size,
            "max_pixels": max_pixels,
            "images": count,
            "seconds": round(seconds, 2),
            "images_per_s": round(count / seconds, 3),
            "peak_gpu_memory_gib": round(peak, 2) if peak is not None else None,
            "failed": len(failed),
        }
        if failed:
            run["first_error"] = failed[0].error
        results["runs"].append(run)
        print(json.dumps(run), flush=True)

    for max_pixels in (28 * 28 * 16384, args.capped_max_pixels):
        measure("seed: one image per generate call", 1, max_pixels, args.seed_images)
        for batch_size in (int(size) for size in args.batch_sizes.split(",")):
            measure(
                "rococap batched worker path",
                batch_size,
                max_pixels,
                max(args.images // batch_size, 1) * batch_size,
            )
    text = json.dumps(results, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
