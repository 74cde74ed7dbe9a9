"""The compose stack's promises, Flower against a real worker, and the per-GPU launcher plan."""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT, rococap_cli
from tests.services import collect_until_done, free_port, wait_until

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
COMPOSE_ENV = {"FLOWER_BASIC_AUTH": "admin:test-password"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def test_docker_compose_validates_the_file():
    binary = shutil.which("docker-compose")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is missing in CI: .ci/run must install it")
        pytest.skip(
            "docker-compose is not installed here (apt-get install --no-install-recommends docker-compose)"
        )
    result = subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), "config"],
        capture_output=True,
        text=True,
        env={**os.environ, **COMPOSE_ENV},
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)
    assert set(rendered["services"]) == {"redis", "worker", "collector", "flower", "producer"}
    missing_auth = subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), "config"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "FLOWER_BASIC_AUTH"},
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert missing_auth.returncode != 0 and "FLOWER_BASIC_AUTH" in missing_auth.stderr


def test_worker_reserves_gpus_and_runs_one_process_per_gpu(compose):
    worker = compose["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["driver"] == "nvidia"
    assert worker["command"][:2] == ["worker", "--gpus"]
    assert "/models/huggingface" in " ".join(worker["volumes"]) and worker["environment"]["HF_HOME"]
    for name in ("ROCOCAP_MODEL", "ROCOCAP_DTYPE", "ROCOCAP_BATCH_SIZE"):
        assert name in worker["environment"]


def test_redis_is_durable_healthy_and_not_published(compose):
    redis = compose["services"]["redis"]
    assert "--appendonly yes" in " ".join(redis["command"])
    assert "redis-data:/data" in redis["volumes"]
    assert "healthcheck" in redis and "ping" in " ".join(redis["healthcheck"]["test"])
    assert "ports" not in redis


def test_services_wait_for_a_healthy_redis(compose):
    for name in ("worker", "collector", "flower", "producer"):
        assert compose["services"][name]["depends_on"]["redis"]["condition"] == "service_healthy", name


def test_flower_has_auth_from_the_environment_and_listens_on_localhost(compose):
    flower = compose["services"]["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    assert flower["ports"] == ["${FLOWER_BIND:-127.0.0.1}:${FLOWER_PORT:-5555}:5555"]
    assert "--persistent=True" in flower["command"]


def test_producer_is_one_shot_and_collector_writes_to_the_host(compose):
    assert compose["services"]["producer"]["profiles"] == ["producer"]
    assert compose["services"]["collector"]["volumes"] == ["${RESULTS_DIR:-./results}:/results"]


def test_env_example_lists_every_variable_the_compose_file_reads():
    text = COMPOSE_FILE.read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", text))
    listed = set(re.findall(r"^([A-Z0-9_]+)=", (REPO_ROOT / ".env.example").read_text(), flags=re.M))
    assert used and used <= listed, sorted(used - listed)


def test_images_run_as_non_root_with_the_model_cache_on_a_volume():
    for dockerfile in (REPO_ROOT / "worker/Dockerfile", REPO_ROOT / "collector/Dockerfile"):
        text = dockerfile.read_text()
        assert re.search(r"^USER rococap$", text, flags=re.M), dockerfile
        assert "PYTHONUNBUFFERED=1" in text and "HF_HOME=/models/huggingface" in text
        assert "--mount=type=cache,target=/root/.cache/pip" in text


def get(url: str, auth: tuple[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except (urllib.error.URLError, ConnectionError):
        return 0, ""


@pytest.mark.slow
def test_flower_shows_the_worker_and_counts_its_tasks(
    tiny_model, rocov2_folder, tmp_path, redis_server, cli_processes
):
    port = free_port()
    auth = ("admin", "test-password")
    flower_env = {"FLOWER_BASIC_AUTH": ":".join(auth), "CELERY_BROKER_URL": redis_server.url}
    celery = str(Path(sys.executable).with_name("celery"))
    flower = subprocess.Popen(
        [celery, "flower", f"--port={port}", "--address=127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **flower_env},
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: get(f"{base}/healthcheck")[0] == 200, 30, "Flower")
        cli_processes(
            ["worker", "--gpus", "cpu", "--model", str(tiny_model), "--redis-url", redis_server.url],
            tmp_path / "worker.log",
        )
        enqueued = rococap_cli(
            "enqueue",
            "test",
            "--dataset",
            str(rocov2_folder),
            "--model",
            str(tiny_model),
            "--max-new-tokens",
            "4",
            "--limit",
            "6",
            "--chunk-size",
            "2",
            "--redis-url",
            redis_server.url,
            "--run",
            "flower",
        )
        assert enqueued.returncode == 0, enqueued.stderr
        collector = cli_processes(
            collect_until_done(tmp_path / "out", redis_server.url, run="flower"), tmp_path / "collector.log"
        )
        assert collector.wait(120) == 0, collector.log()

        worker_name = f"cpu@{socket.gethostname()}"
        assert get(f"{base}/api/workers")[0] == 401
        wait_until(
            lambda: worker_name in get(f"{base}/api/workers?refresh=1", auth)[1], 30, "worker in Flower"
        )

        def succeeded() -> int:
            metrics = get(f"{base}/metrics")[1]
            for labels, value in re.findall(r"^flower_events_total\{([^}]*)\} (\S+)$", metrics, flags=re.M):
                found = dict(re.findall(r'(\w+)="([^"]*)"', labels))
                if found == {"task": "rococap.caption", "type": "task-succeeded", "worker": worker_name}:
                    return int(float(value))
            return 0

        assert wait_until(lambda: succeeded() >= 3, 30, "3 succeeded tasks in /metrics")
        status, tasks = get(f"{base}/api/tasks", auth)
        assert status == 200
        assert "'run': 'flower'" in tasks and "ROCOv2_2023_test_000001" in tasks  # readable run and ids
    finally:
        flower.terminate()
        flower.wait(timeout=20)
