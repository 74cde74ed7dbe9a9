"""Shared fixtures: a tiny offline Qwen2-VL, small ROCOv2-format datasets, subprocess helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.rocov2 import synthetic_rows, write_split
from tests.fixtures.tiny_model import build_tiny_qwen2vl

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def offline_hub(tmp_path_factory):
    """No test may reach a hub; the datasets cache lives in a temporary folder."""
    cache = tmp_path_factory.mktemp("hf-datasets-cache")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_DATASETS_CACHE"] = str(cache)
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    yield


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random Qwen2-VL and its processor, built once per session."""
    return build_tiny_qwen2vl(tmp_path_factory.mktemp("tiny-qwen2vl"))


@pytest.fixture(scope="session")
def rocov2_folder(tmp_path_factory) -> Path:
    """A ROCOv2-format folder: test (40 rows in 2 shards) and validation (6 rows) splits."""
    folder = tmp_path_factory.mktemp("rocov2")
    write_split(folder, "test", synthetic_rows("test", 40), shards=2)
    write_split(folder, "validation", synthetic_rows("validation", 6))
    return folder


def rococap_cli(*args: str, env: dict | None = None, timeout: float = 240, cwd: Path | None = None):
    """Run the real `rococap` console entry point in a subprocess."""
    script = Path(sys.executable).with_name("rococap")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "rococap.cli"]
    command += list(args)
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}, cwd=cwd
    )


@pytest.fixture
def redis_server(tmp_path):
    """A private redis-server on a free port, stopped after the test."""
    from tests.services import RedisServer

    data = tmp_path / "redis-data"
    data.mkdir()
    server = RedisServer(data).start()
    yield server
    server.stop()


@pytest.fixture
def cli_processes():
    """Start long-running `rococap` subprocesses; all are stopped after the test."""
    from tests.services import CliProcess

    started: list[CliProcess] = []

    def start(args: list[str], log_path: Path, env: dict | None = None) -> CliProcess:
        started.append(CliProcess(args, log_path, env))
        return started[-1]

    yield start
    for process in started:
        process.stop()
