"""``pollen health``: exit status tells whether Redis and the workers are alive."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pollen.local.servers import Worker, free_port

pytestmark = pytest.mark.integration


def health(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pollen.cli", "health", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_healthy_fleet_and_local_worker(worker: Worker, worker_env: dict[str, str]) -> None:
    fleet = health(worker_env)
    assert fleet.returncode == 0, fleet.stdout + fleet.stderr
    assert "test-worker@" in fleet.stdout
    local = health(worker_env, "--local")
    assert local.returncode == 0, local.stdout
    assert "last heartbeat" in local.stdout


def test_unreachable_redis_fails(worker_env: dict[str, str]) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    result = health({**worker_env, "POLLEN_REDIS_URL": dead, "POLLEN_BROKER_URL": dead})
    assert result.returncode == 1
    assert "FAIL store: unreachable" in result.stdout


def test_missing_heartbeat_fails(worker_env: dict[str, str], tmp_path: object) -> None:
    result = health({**worker_env, "POLLEN_HEARTBEAT_FILE": f"{tmp_path}/none"}, "--local")
    assert result.returncode == 1
    assert "does not exist" in result.stdout
