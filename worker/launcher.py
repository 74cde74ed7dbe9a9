"""`rococap worker`: one Celery worker process per GPU (or one CPU worker), each with a solo pool.

Every process sees exactly one GPU (CUDA_VISIBLE_DEVICES pinned), holds one model, consumes the
queue of that model only, and is named after its device (`gpu0@host`, `cpu@host`) in Flower.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field, replace

from rococap.celery_app import queue_for_model
from rococap.errors import RococapError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerProcess:
    """One planned worker process."""

    device: str  # "cpu" or a GPU index as a string
    label: str  # the node name before @host
    hostname: str
    queue: str
    env: dict[str, str] = field(default_factory=dict)


def visible_gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def parse_gpus(value: str, gpu_count=visible_gpu_count) -> list[str]:
    """`all`, `cpu`, or a comma-separated list of distinct GPU indices."""
    value = value.strip().lower()
    if value == "cpu":
        return ["cpu"]
    if value == "all":
        count = gpu_count()
        if count == 0:
            raise RococapError(
                "--gpus all: no CUDA GPU is visible here; use --gpus cpu, or check the NVIDIA driver"
            )
        return [str(index) for index in range(count)]
    parts = [part.strip() for part in value.split(",")]
    if not parts or not all(part.isdigit() for part in parts) or len(set(parts)) != len(parts):
        raise RococapError(
            f"invalid --gpus value {value!r}: use all, cpu, or distinct GPU indices such as 0,1,3"
        )
    return [str(int(part)) for part in parts]


def plan_workers(
    gpus: list[str], model: str, host: str | None = None, name: str | None = None
) -> list[WorkerProcess]:
    """One process per device, named `<label>@<host>`; `name` replaces the label (suffixed per GPU)."""
    host = host or socket.gethostname()
    queue = queue_for_model(model)
    plans = []
    for device in gpus:
        label = "cpu" if device == "cpu" else f"gpu{device}"
        if name:
            label = name if len(gpus) == 1 else f"{name}-{label}"
        env = {"CUDA_VISIBLE_DEVICES": "" if device == "cpu" else device}
        plans.append(
            WorkerProcess(device=device, label=label, hostname=f"{label}@{host}", queue=queue, env=env)
        )
    return plans


def describe(plans: list[WorkerProcess]) -> list[str]:
    return [
        f"{plan.hostname}: CUDA_VISIBLE_DEVICES={plan.env['CUDA_VISIBLE_DEVICES'] or '(none)'} "
        f"queue={plan.queue} pool=solo"
        for plan in plans
    ]


def start_in_process(plan: WorkerProcess, worker_settings, log_level: str, captioner=None) -> None:
    """Run one Celery worker (solo pool) in this process; returns when it shuts down."""
    os.environ.update(plan.env)
    from rococap.worker.tasks import make_worker_app

    app = make_worker_app(worker_settings, captioner=captioner)
    # Load the model in this process before consuming: no task waits for it, and a model that cannot
    # be loaded stops the worker with its one-line error instead of failing tasks.
    app.rococap_state.warm_up()
    app.worker_main(
        [
            "worker",
            "--pool=solo",
            "--concurrency=1",
            f"--hostname={plan.hostname}",
            f"--queues={plan.queue}",
            "--task-events",
            f"--loglevel={log_level}",
            "--without-mingle",
        ]
    )


def supervise(plans: list[WorkerProcess], child_argv: list[str]) -> int:
    """Start one child `rococap worker --gpus N` per plan; forward SIGINT/SIGTERM; wait for all."""
    children = []
    for plan in plans:
        argv = [sys.executable, "-m", "rococap.cli", *child_argv, "--gpus", plan.device, "--name", plan.label]
        children.append(subprocess.Popen(argv, env={**os.environ, **plan.env}))
        log.info("started %s (pid %d)", plan.hostname, children[-1].pid)

    def forward(signum, _frame):
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        codes = [child.wait() for child in children]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return max((abs(code) for code in codes), default=0)


def with_device(runtime, plan: WorkerProcess):
    """A GPU worker sees its one GPU as cuda:0; a CPU worker runs on the CPU."""
    return replace(runtime, device="cpu" if plan.device == "cpu" else "cuda")
