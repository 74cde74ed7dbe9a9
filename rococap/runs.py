"""The run registry in Redis, shared by producer, workers, collector and status.

Keys, all under `rococap:`:
  runs                       set of run names
  run:<run>                  hash: split, dataset, queue, total, created_at, caption_settings (JSON)
  run:<run>:enqueued         set of ids sent to the queue
  run:<run>:pushed           set of ids whose result record is in the stream (or already collected)
  run:<run>:results          stream of result records (JSON), read by the collector's group
  run:<run>:active           hash task id -> ids being captioned now
  run:<run>:deliveries       hash task id -> deliveries so far (bounds poison tasks)
  run:<run>:progress         hash captioned, failed, updated_at (written by the collector)
  run:<run>:rate             list of "unix_time done" samples (newest first, bounded)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from rococap.errors import RococapError
from rococap.records import utc_now_iso
from rococap.settings import CaptionSettings, validate_run_name

KEY_PREFIX = "rococap:"
RATE_SAMPLES_KEPT = 240
REDIS_CONNECT_TIMEOUT_S = 3


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


def connect_redis(url: str):
    """A Redis client that has answered PING, or a one-line error naming the URL and the fix."""
    import redis

    try:
        client = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
            socket_timeout=30,
            health_check_interval=30,
        )
        client.ping()
    except redis.AuthenticationError:
        raise RococapError(
            f"Redis at {redact_url(url)} refused the password: put the right one in the URL "
            "(redis://:PASSWORD@host:6379/0) via --redis-url or ROCOCAP_REDIS_URL"
        ) from None
    except redis.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            raise RococapError(
                f"Redis at {redact_url(url)} needs a password: put it in the URL "
                "(redis://:PASSWORD@host:6379/0) via --redis-url or ROCOCAP_REDIS_URL"
            ) from None
        raise RococapError(f"Redis at {redact_url(url)} answered with an error: {exc}") from None
    except (redis.ConnectionError, redis.TimeoutError, ValueError) as exc:
        raise RococapError(
            f"cannot reach Redis at {redact_url(url)} ({' '.join(str(exc).split())[:120]}): start redis-server "
            "or point --redis-url / ROCOCAP_REDIS_URL at a running one"
        ) from None
    return client


@dataclass(frozen=True)
class RunKeys:
    """The Redis key names of one run (see the module docstring)."""

    run: str

    def __post_init__(self) -> None:
        validate_run_name(self.run)

    def _key(self, suffix: str = "") -> str:
        return f"{KEY_PREFIX}run:{self.run}{suffix}"

    @property
    def spec(self) -> str:
        return self._key()

    @property
    def enqueued(self) -> str:
        return self._key(":enqueued")

    @property
    def pushed(self) -> str:
        return self._key(":pushed")

    @property
    def results(self) -> str:
        return self._key(":results")

    @property
    def active(self) -> str:
        return self._key(":active")

    @property
    def deliveries(self) -> str:
        return self._key(":deliveries")

    @property
    def progress(self) -> str:
        return self._key(":progress")

    @property
    def rate(self) -> str:
        return self._key(":rate")


RUNS_KEY = KEY_PREFIX + "runs"
COLLECTOR_GROUP = "collectors"


@dataclass(frozen=True)
class RunSpec:
    """What a run asks of its workers, registered by the producer."""

    run: str
    split: str
    dataset: str
    queue: str
    caption: CaptionSettings
    created_at: str

    def to_hash(self) -> dict[str, str]:
        return {
            "run": self.run,
            "split": self.split,
            "dataset": self.dataset,
            "queue": self.queue,
            "caption_settings": json.dumps(self.caption.to_dict(), sort_keys=True),
            "created_at": self.created_at,
        }

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> RunSpec:
        return cls(
            run=data["run"],
            split=data["split"],
            dataset=data["dataset"],
            queue=data["queue"],
            caption=CaptionSettings.from_dict(json.loads(data["caption_settings"])),
            created_at=data["created_at"],
        )

    def manifest(self) -> dict:
        """The identity part of run.json, equal to what `rococap run` writes for the same settings."""
        return {
            "run": self.run,
            "split": self.split,
            "dataset": self.dataset,
            "caption_settings": self.caption.to_dict(),
        }


def load_spec(client, run: str) -> RunSpec | None:
    data = client.hgetall(RunKeys(run).spec)
    return RunSpec.from_hash(data) if data else None


def list_runs(client) -> list[str]:
    return sorted(client.smembers(RUNS_KEY))


def record_progress(client, run: str, captioned: int, failed: int) -> None:
    """Absolute counts from the collector's files, plus a rate sample."""
    keys = RunKeys(run)
    now = time.time()
    pipe = client.pipeline(transaction=False)
    pipe.hset(keys.progress, mapping={"captioned": captioned, "failed": failed, "updated_at": utc_now_iso()})
    pipe.lpush(keys.rate, f"{now:.3f} {captioned + failed}")
    pipe.ltrim(keys.rate, 0, RATE_SAMPLES_KEPT - 1)
    pipe.execute()
