"""Peak RSS of a worker and of the collector over a long run (it must stay flat).

Rerun: .venv/bin/python bench/bench_memory.py --images 5000
A real `rococap worker --gpus cpu` and a real `rococap collect` process against a private
redis-server; RSS (VmRSS from /proc) is sampled every 0.5 s and reported per 10% of progress.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine_line, prepare

from tests.services import RedisServer, collect_until_done

ROCOCAP = str(Path(sys.executable).with_name("rococap"))


def rss_mb(pid: int) -> tuple[float, float]:
    """(anonymous RSS, file-backed RSS) in MB: the second is mostly the memory-mapped dataset,
    page cache the kernel can reclaim, which grows with the share of the split read so far."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("RssAnon:", "RssFile:")):
            values[line.split(":")[0]] = int(line.split()[1]) / 1024
    return values.get("RssAnon", 0.0), values.get("RssFile", 0.0)


def rows_written(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as handle:
        return max(0, sum(1 for _ in handle) - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--tokens", type=int, default=8)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="rococap-bench-"))
    model, dataset = prepare(workdir, args.images)
    (workdir / "redis").mkdir()
    server = RedisServer(workdir / "redis").start()
    url = server.url
    worker = subprocess.Popen(
        [ROCOCAP, "worker", "--gpus", "cpu", "--model", str(model), "--redis-url", url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    collector = subprocess.Popen(
        [ROCOCAP, *collect_until_done(workdir / "out", url)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(2)
        subprocess.run(
            [
                ROCOCAP,
                "enqueue",
                "test",
                "--dataset",
                str(dataset),
                "--model",
                str(model),
                "--max-new-tokens",
                str(args.tokens),
                "--redis-url",
                url,
            ],
            check=True,
            capture_output=True,
        )
        csv_path = workdir / "out/test/medical_captions_test.csv"
        samples = []
        started = time.monotonic()
        while collector.poll() is None:
            samples.append((rows_written(csv_path), rss_mb(worker.pid), rss_mb(collector.pid)))
            time.sleep(0.5)
        wall = time.monotonic() - started
    finally:
        for process in (worker, collector):
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=30)
        server.stop()
    table = []
    for decile in range(1, 11):
        target = args.images * decile // 10
        reached = [s for s in samples if s[0] >= target * 0.97] or samples[-1:]
        rows, (worker_anon, worker_file), (collector_anon, collector_file) = reached[0]
        table.append(
            {
                "rows": rows,
                "worker_anon_mb": round(worker_anon, 1),
                "worker_file_mb": round(worker_file, 1),
                "collector_anon_mb": round(collector_anon, 1),
                "collector_file_mb": round(collector_file, 1),
            }
        )
    result = {
        "machine": machine_line(),
        "images": args.images,
        "wall_s": round(wall, 1),
        "worker_peak_anon_rss_mb": round(max(s[1][0] for s in samples), 1),
        "worker_peak_file_rss_mb": round(max(s[1][1] for s in samples), 1),
        "collector_peak_anon_rss_mb": round(max(s[2][0] for s in samples), 1),
        "collector_peak_file_rss_mb": round(max(s[2][1] for s in samples), 1),
        "by_progress": table,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
