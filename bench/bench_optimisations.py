"""What each local-loop optimisation gains, with the tiny model on CPU (same images, forced tokens).

Rerun: .venv/bin/python bench/bench_optimisations.py --images 512 --batch-size 8 --tokens 32 --repeats 3
       .venv/bin/python bench/bench_optimisations.py --images 96 --batch-size 8 --tokens 32 --mixed-sizes
Configurations are cumulative: eager attention, no prefetch, split order -> + SDPA -> + prefetch
of the next batch -> + size-sorted batches. Each figure is the best of --repeats runs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import machine_line, prepare

from rococap.captioner import Captioner
from rococap.local import run_local
from rococap.settings import CaptionSettings, OutputSettings, RuntimeSettings, Settings
from tests.fixtures.rocov2 import Row, png_bytes, synthetic_image, write_split

CONFIGS = [
    ("baseline (eager, no prefetch, split order)", dict(attention="eager", sort_by_size=False), False),
    ("+ SDPA attention", dict(attention="sdpa", sort_by_size=False), False),
    ("+ prefetch of the next batch", dict(attention="sdpa", sort_by_size=False), True),
    ("+ size-sorted batches", dict(attention="sdpa", sort_by_size=True), True),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--mixed-sizes",
        action="store_true",
        help="images of 64-896 px a side (like ROCOv2's spread) instead of 64-224 px",
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="rococap-bench-"))
    model, dataset = prepare(workdir, args.images)
    if args.mixed_sizes:
        dataset = workdir / "mixed"
        rows = []
        for number in range(1, args.images + 1):
            side = 64 + (number * 193) % 833
            other = 64 + (number * 389) % 833
            rows.append(
                Row(f"ROCOv2_2023_test_{number:06d}", png_bytes(synthetic_image(number, side, other)))
            )
        write_split(dataset, "test", rows)
    caption = CaptionSettings(model=str(model), max_new_tokens=args.tokens)
    results = {
        "machine": machine_line(),
        "images": args.images,
        "batch_size": args.batch_size,
        "tokens": args.tokens,
        "configs": [],
    }
    for label, runtime_options, prefetch in CONFIGS:
        runtime = RuntimeSettings(
            device="cpu", dtype="float32", batch_size=args.batch_size, **runtime_options
        )
        captioner = Captioner.load(caption, runtime, extra_generate_kwargs={"min_new_tokens": args.tokens})
        best = 0.0
        for _ in range(args.repeats):
            settings = Settings(
                dataset=str(dataset),
                split="test",
                caption=caption,
                runtime=runtime,
                output=OutputSettings(out_dir=str(workdir / "out"), run=f"r{time.time_ns()}"),
            )
            summary = run_local(settings, show_progress=False, captioner=captioner, prefetch=prefetch)
            best = max(best, summary.images_per_second)
        results["configs"].append({"config": label, "images_per_s": round(best, 2)})
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
