"""`rococap collect`: read result records from the runs' Redis streams into the run folders.

The collector reads with a consumer group (XREADGROUP), adds records through the same
`RunOutput` as `rococap run` (dedup by image_id, fsynced checkpoints), and only after the rows
are on disk acknowledges and deletes the entries (XACK + XDEL), so Redis memory stays bounded
and a killed collector loses nothing: on restart it first re-reads its own pending entries,
and claims those of consumers idle for long, then dedup drops what was already written.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from dataclasses import dataclass, field

from rococap.output import RunOutput
from rococap.records import record_from_json
from rococap.runs import COLLECTOR_GROUP, RunKeys, RunSpec, list_runs, load_spec, record_progress, redact_url

log = logging.getLogger(__name__)

READ_COUNT = 500  # entries per XREADGROUP call
BLOCK_MS = 500  # how long one read waits for new entries when the streams were quiet
BUSY_BLOCK_MS = 50  # ... and right after a read that returned entries, to notice the end of a burst soon
CHECKPOINT_INTERVAL_S = 2.0  # a partial checkpoint at least this often while rows trickle in
CLAIM_IDLE_MS = 60_000  # pending entries of other consumers idle this long are taken over
RUNS_REFRESH_S = 2.0
REDIS_RETRY_MAX_S = 10.0


@dataclass(frozen=True)
class CollectorSettings:
    redis_url: str
    out_dir: str
    checkpoint_every: int
    run: str | None = None
    until_done: bool = False
    consumer: str = field(default_factory=lambda: f"collector@{socket.gethostname()}")


class RunSink:
    """One run's output folder and the stream entries read since its last checkpoint."""

    def __init__(self, spec: RunSpec, output: RunOutput):
        self.spec = spec
        self.output = output
        self.keys = RunKeys(spec.run)
        self.unacked: list[str] = []
        self.last_checkpoint = time.monotonic()
        self.complete = False


class Collector:
    def __init__(self, settings: CollectorSettings, client):
        self.settings = settings
        self.client = client
        self.sinks: dict[str, RunSink] = {}
        self._runs_checked = 0.0
        self._busy = False

    # -- runs --------------------------------------------------------------------------------
    def refresh_runs(self) -> None:
        if time.monotonic() - self._runs_checked < RUNS_REFRESH_S and self.sinks:
            return
        self._runs_checked = time.monotonic()
        names = [self.settings.run] if self.settings.run else list_runs(self.client)
        for name in names:
            if name not in self.sinks:
                spec = load_spec(self.client, name)
                if spec is not None:
                    self.sinks[name] = self._open_sink(spec)

    def _open_sink(self, spec: RunSpec) -> RunSink:
        output = RunOutput(self.settings.out_dir, spec.run, spec.split, self.settings.checkpoint_every)
        output.open({**spec.manifest(), "queue": spec.queue, "collected_by": self.settings.consumer})
        sink = RunSink(spec, output)
        try:
            self.client.xgroup_create(sink.keys.results, COLLECTOR_GROUP, id="0", mkstream=True)
        except Exception as exc:  # BUSYGROUP: the group exists already
            if "BUSYGROUP" not in str(exc):
                raise
        log.info("collecting run %s into %s", spec.run, output.folder)
        self._reclaim(sink)
        return sink

    def _reclaim(self, sink: RunSink) -> None:
        """Re-read this consumer's pending entries, and take over long-idle ones of others."""
        while True:
            reply = self.client.xreadgroup(
                COLLECTOR_GROUP, self.settings.consumer, {sink.keys.results: "0"}, count=READ_COUNT
            )
            entries = reply[0][1] if reply else []
            if not entries:
                break
            self._add_entries(sink, entries)
            self.flush(sink)
        start = "0-0"
        while True:
            start, claimed, *_ = self.client.xautoclaim(
                sink.keys.results,
                COLLECTOR_GROUP,
                self.settings.consumer,
                CLAIM_IDLE_MS,
                start_id=start,
                count=READ_COUNT,
            )
            if claimed:
                self._add_entries(sink, [(entry_id, data) for entry_id, data in claimed if data])
                self.flush(sink)
            if start == "0-0":
                break

    # -- reading and writing -----------------------------------------------------------------
    def _add_entries(self, sink: RunSink, entries) -> None:
        for entry_id, data in entries:
            sink.unacked.append(entry_id)
            try:
                record = record_from_json(json.loads(data["record"]))
            except (KeyError, TypeError, ValueError) as exc:
                log.error("run %s: dropping malformed stream entry %s (%s)", sink.spec.run, entry_id, exc)
                continue
            sink.output.add(record)

    def flush(self, sink: RunSink) -> None:
        """Checkpoint the files, then acknowledge and delete the entries they hold."""
        sink.output.checkpoint()
        sink.last_checkpoint = time.monotonic()
        if sink.unacked:
            pipe = self.client.pipeline(transaction=False)
            pipe.xack(sink.keys.results, COLLECTOR_GROUP, *sink.unacked)
            pipe.xdel(sink.keys.results, *sink.unacked)
            pipe.execute()
            sink.unacked.clear()
        record_progress(self.client, sink.spec.run, sink.output.captioned_count, sink.output.failed_count)

    def step(self) -> int:
        """One read across all runs; returns the number of entries read."""
        self.refresh_runs()
        if not self.sinks:
            time.sleep(BLOCK_MS / 1000)
            return 0
        streams = {sink.keys.results: ">" for sink in self.sinks.values()}
        reply = self.client.xreadgroup(
            COLLECTOR_GROUP,
            self.settings.consumer,
            streams,
            count=READ_COUNT,
            block=BUSY_BLOCK_MS if self._busy else BLOCK_MS,
        )
        by_stream = {stream: entries for stream, entries in reply or []}
        self._busy = bool(by_stream)
        read = 0
        for sink in self.sinks.values():
            entries = by_stream.get(sink.keys.results, [])
            read += len(entries)
            self._add_entries(sink, entries)
            due = time.monotonic() - sink.last_checkpoint >= CHECKPOINT_INTERVAL_S
            if sink.output.pending >= self.settings.checkpoint_every or (
                sink.unacked and (due or not entries)
            ):
                self.flush(sink)
        return read

    def run_complete(self, sink: RunSink) -> bool:
        """Every enqueued id of the run is in its CSV or its failed file, and nothing is unwritten."""
        if sink.unacked or sink.output.pending:
            return False
        enqueued = self.client.scard(sink.keys.enqueued)
        if enqueued == 0 or len(sink.output.done) < enqueued:
            return False
        return all(
            image_id in sink.output.done
            for image_id in self.client.sscan_iter(sink.keys.enqueued, count=5000)
        )

    def serve(self) -> int:
        """Collect until stopped, or with --until-done until the run (or every run) is complete."""
        import redis

        delay = 0.5
        while True:
            try:
                self.step()
                delay = 0.5
                if (
                    self.settings.until_done
                    and self.sinks
                    and all(self.run_complete(s) for s in self.sinks.values())
                ):
                    for sink in self.sinks.values():
                        self.flush(sink)
                    return 0
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning(
                    "Redis at %s unreachable (%s); retrying in %.1f s",
                    redact_url(self.settings.redis_url),
                    exc,
                    delay,
                )
                time.sleep(delay)
                delay = min(REDIS_RETRY_MAX_S, delay * 2)

    def close(self) -> None:
        for sink in self.sinks.values():
            try:
                self.flush(sink)
            except Exception as exc:  # Redis gone: the rows are on disk, entries stay pending for next time
                log.warning(
                    "run %s: final acknowledge failed (%s); entries will be re-read next time",
                    sink.spec.run,
                    exc,
                )
                sink.output.checkpoint()
