"""`rococap status`: per-run progress from the Redis registry, and the workers online."""

from __future__ import annotations

import time
from dataclasses import dataclass

from rococap.runs import RunKeys, list_runs, load_spec

RATE_WINDOW_S = 60.0


@dataclass(frozen=True)
class RunStatus:
    run: str
    split: str
    total: int  # ids enqueued
    captioned: int  # rows in the CSV (as the collector last reported)
    failed: int  # rows in the failed file
    pushed: int  # results produced by workers, collected or not
    in_progress: int  # ids in tasks being captioned now
    images_per_s: float | None  # rows written per second over the last minute

    @property
    def done(self) -> int:
        return self.captioned + self.failed

    @property
    def queued(self) -> int:
        return max(0, self.total - self.pushed - self.in_progress)

    @property
    def eta_s(self) -> float | None:
        if self.done >= self.total:
            return 0.0
        if not self.images_per_s:
            return None
        return (self.total - self.done) / self.images_per_s

    def to_dict(self) -> dict:
        return {
            "run": self.run,
            "split": self.split,
            "total": self.total,
            "done": self.done,
            "captioned": self.captioned,
            "failed": self.failed,
            "queued": self.queued,
            "in_progress": self.in_progress,
            "images_per_s": self.images_per_s,
            "eta_s": self.eta_s,
        }


def rate_from_samples(samples: list[str], now: float) -> float | None:
    """Rows per second between the oldest and newest collector sample of the last minute."""
    points = []
    for sample in samples:
        stamp, done = sample.split()
        if now - float(stamp) <= RATE_WINDOW_S:
            points.append((float(stamp), int(done)))
    if len(points) < 2:
        return None
    (newest_t, newest_done), (oldest_t, oldest_done) = points[0], points[-1]
    if newest_t <= oldest_t:
        return None
    return max(0.0, (newest_done - oldest_done) / (newest_t - oldest_t))


def run_status(client, run: str) -> RunStatus | None:
    spec = load_spec(client, run)
    if spec is None:
        return None
    keys = RunKeys(run)
    pipe = client.pipeline(transaction=False)
    pipe.scard(keys.enqueued)
    pipe.scard(keys.pushed)
    pipe.hvals(keys.active)
    pipe.hgetall(keys.progress)
    pipe.lrange(keys.rate, 0, -1)
    total, pushed, active, progress, samples = pipe.execute()
    return RunStatus(
        run=run,
        split=spec.split,
        total=total,
        captioned=int(progress.get("captioned", 0)),
        failed=int(progress.get("failed", 0)),
        pushed=pushed,
        in_progress=sum(int(v) for v in active),
        images_per_s=rate_from_samples(samples, time.time()),
    )


def all_statuses(client, run: str | None = None) -> list[RunStatus]:
    names = [run] if run else list_runs(client)
    return [status for status in (run_status(client, name) for name in names) if status is not None]


def workers_online(app, timeout_s: float = 1.0) -> list[str]:
    """Names of the Celery workers that answer a ping."""
    replies = app.control.ping(timeout=timeout_s) or []
    return sorted(name for reply in replies for name in reply)


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def format_table(statuses: list[RunStatus], workers: list[str]) -> list[str]:
    header = (
        f"{'run':<20} {'split':<10} {'total':>7} {'done':>7} {'failed':>6} {'queued':>7} {'running':>7} "
        f"{'img/s':>7} {'eta':>9}"
    )
    lines = [header]
    for s in statuses:
        rate = f"{s.images_per_s:.2f}" if s.images_per_s is not None else "-"
        lines.append(
            f"{s.run:<20} {s.split:<10} {s.total:>7} {s.done:>7} {s.failed:>6} {s.queued:>7} "
            f"{s.in_progress:>7} {rate:>7} {format_eta(s.eta_s):>9}"
        )
    lines.append(f"workers online: {len(workers)}" + (f" ({', '.join(workers)})" if workers else ""))
    return lines


def progress_bar(status: RunStatus, width: int = 40) -> str:
    fraction = status.done / status.total if status.total else 0.0
    filled = int(round(fraction * width))
    return (
        f"{status.run}: [{'#' * filled}{'.' * (width - filled)}] {status.done}/{status.total} "
        f"({100 * fraction:.1f}%) eta {format_eta(status.eta_s)}"
    )
