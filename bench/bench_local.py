"""Images/s of the local loop (`rococap run`'s code path) with the tiny model on CPU, per batch size.

Rerun: .venv/bin/python bench/bench_local.py --images 64 --batch-sizes 1,4,8,16 --tokens 32
Each setting captions the same images into a fresh run folder; generation is forced to exactly
--tokens new tokens so that every batch size does the same work.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import machine_line, prepare

from rococap.captioner import Captioner
from rococap.local import run_local
from rococap.settings import CaptionSettings, OutputSettings, RuntimeSettings, Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-sizes", default="1,4,8,16")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="rococap-bench-"))
    model, dataset = prepare(workdir, args.images)
    caption = CaptionSettings(model=str(model), max_new_tokens=args.tokens)
    print(f"# local loop, tiny Qwen2-VL, CPU: {machine_line()}")
    print(f"# {args.images} synthetic images (64-224 px a side), {args.tokens} forced new tokens")
    print("| batch size | images/s | wall s |")
    print("| --- | --- | --- |")
    for batch_size in [int(size) for size in args.batch_sizes.split(",")]:
        runtime = RuntimeSettings(device="cpu", dtype="float32", batch_size=batch_size)
        captioner = Captioner.load(caption, runtime, extra_generate_kwargs={"min_new_tokens": args.tokens})
        settings = Settings(
            dataset=str(dataset),
            split="test",
            caption=caption,
            runtime=runtime,
            output=OutputSettings(
                out_dir=str(workdir / "out"), run=f"bs{batch_size}-{time.time_ns()}", checkpoint_every=25
            ),
        )
        summary = run_local(settings, show_progress=False, captioner=captioner)
        print(f"| {batch_size} | {summary.images_per_second:.2f} | {summary.wall_seconds:.1f} |")


if __name__ == "__main__":
    main()
