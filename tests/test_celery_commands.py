"""Celery's own commands on pollen's app behave like ``pollen worker``: the same exit code on a
fatal error, the same pool, and queues that each receive only their own messages."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import cast

import celery
import pytest
import redis

from pollen import contract
from pollen.local.servers import RedisServer, Worker
from tests.conftest import OWN_BROKER_DB, OWN_STORE_DB, settings_from

pytestmark = pytest.mark.integration

BROKER, STORE = OWN_BROKER_DB, OWN_STORE_DB
QUEUES = ("pollen.submit", "pollen.poll", "pollen.callbacks")
PLAIN_CELERY = [sys.executable, "-m", "celery", "-A", "pollen.worker"]


class CeleryWorker(Worker):
    """``celery -A pollen.worker worker`` (no pool or concurrency flags) in a child process."""

    def start(self) -> None:
        self._spawn([*PLAIN_CELERY, "worker", "-n", f"{self.name}@%h", *self.extra_args])


def exit_code(args: list[str], env: dict[str, str], log: Path) -> int:
    """Run a worker command that must stop by itself; its exit code."""
    with log.open("wb") as out:
        done = subprocess.run(
            args, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=60, check=False
        )
    return done.returncode


@pytest.mark.parametrize(
    "fault",
    [
        # what the banner shows needs the result backend: one Celery cannot load
        {"POLLEN_RESULT_BACKEND": "nosuchbackend://localhost", "POLLEN_LOG_FORMAT": "text"},
        {"POLLEN_METRICS_PORT": "taken"},  # the metrics exporter cannot listen
    ],
    ids=["result-backend", "metrics-port"],
)
def test_both_worker_commands_exit_1_on_an_unrecoverable_error(
    own_env: dict[str, str], tmp_path: Path, fault: dict[str, str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        env = {**os.environ, **own_env, **{k: v.replace("taken", port) for k, v in fault.items()}}
        pollen_log, celery_log = tmp_path / "pollen.log", tmp_path / "celery.log"
        pollen = exit_code([sys.executable, "-m", "pollen.cli", "worker"], env, pollen_log)
        plain = exit_code([*PLAIN_CELERY, "worker"], env, celery_log)
    assert "Unrecoverable error" in celery_log.read_text()
    # pollen worker checks its metrics port first: one line naming the setting
    said = pollen_log.read_text()
    assert "Unrecoverable error" in said or "(POLLEN_METRICS_PORT): " in said
    assert pollen == plain == 1


def test_a_worker_that_starts_and_stops_cleanly_exits_0(
    own_env: dict[str, str], redis_server: RedisServer
) -> None:
    worker = Worker(own_env, name="clean-exit", concurrency=2)
    with worker:
        worker.wait_ready(redis_server.url(BROKER))
    assert worker.proc is not None
    assert worker.proc.returncode == 0


def stats(env: dict[str, str]) -> dict[str, object]:
    """The pool in ``celery inspect stats`` of the one worker on this broker."""
    done = subprocess.run(
        [*PLAIN_CELERY, "inspect", "stats", "--json", "--timeout", "5"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    replies: dict[str, dict[str, object]] = json.loads(done.stdout)
    (reply,) = replies.values()
    pool = reply["pool"]
    assert isinstance(pool, dict)
    return pool


@pytest.mark.parametrize(
    ("flags", "implementation", "size"),
    [
        ((), "celery.concurrency.thread:TaskPool", 32),  # the app's configuration
        (("-P", "solo"), "celery.concurrency.solo:TaskPool", 1),  # flags still win
        (("-c", "3"), "celery.concurrency.thread:TaskPool", 3),
    ],
)
def test_plain_celery_worker_runs_pollens_pool_unless_flags_say_otherwise(
    own_env: dict[str, str],
    redis_server: RedisServer,
    flags: tuple[str, ...],
    implementation: str,
    size: int,
) -> None:
    with CeleryWorker(own_env, name="plain", extra_args=flags) as worker:
        worker.wait_ready(redis_server.url(BROKER))
        pool = stats(own_env)
    assert pool["implementation"] == implementation
    assert pool["max-concurrency"] == size


def test_pollen_worker_runs_the_pool_it_is_given(
    own_env: dict[str, str], redis_server: RedisServer
) -> None:
    """Celery reads ``-P prefork`` as "no -P" and runs the configured pool: pollen's own
    command configures the pool it is given."""
    with Worker(own_env, name="forked", pool="prefork", concurrency=2) as worker:
        worker.wait_ready(redis_server.url(BROKER))
        pool = stats(own_env)
    assert pool["implementation"] == "celery.concurrency.prefork:TaskPool"
    assert pool["max-concurrency"] == 2


def test_each_queue_is_bound_to_its_own_exchange_and_receives_only_its_messages(
    own_env: dict[str, str], redis_server: RedisServer
) -> None:
    broker = redis.Redis.from_url(redis_server.url(BROKER))
    # what an earlier pollen declared: every queue on pollen.submit with its routing key
    old = [f"pollen.submit\x06\x16\x06\x16{name}" for name in QUEUES]
    broker.sadd("_kombu.binding.pollen.submit", *old)
    with CeleryWorker(own_env, name="binder") as worker:
        worker.wait_ready(redis_server.url(BROKER))
        for name in QUEUES:
            bound = cast("set[bytes]", broker.smembers(f"_kombu.binding.{name}"))
            key = name.encode()
            assert [member.split(b"\x06\x16") for member in bound] == [[key, b"", key]]
    # The worker is gone: what is sent stays in the queues, to be counted.
    plain = celery.Celery(broker=redis_server.url(BROKER))
    pollens = contract.producer_app(settings_from(own_env))
    sends = [(plain, "pollen.submit", {"queue": name}, name) for name in QUEUES] + [
        (pollens, contract.SUBMIT, {}, "pollen.submit"),  # pollen's routes
        (pollens, contract.POLL, {}, "pollen.poll"),
        (pollens, contract.DELIVER_CALLBACK, {}, "pollen.callbacks"),
    ]
    try:
        for app, task, options, lands_in in sends:
            before = {queue: broker.llen(queue) for queue in QUEUES}
            app.send_task(task, kwargs={"job_ids": []}, **options)
            grown = {queue: broker.llen(queue) - before[queue] for queue in QUEUES}
            assert grown == {queue: int(queue == lands_in) for queue in QUEUES}, task
    finally:
        plain.close()
        pollens.close()
        broker.close()


def test_the_bindings_cleanup_keeps_each_queues_own_binding(redis_server: RedisServer) -> None:
    """Only what an earlier pollen left goes: a worker starting for one queue must not remove
    the bindings the other queues' workers (and producers) rely on."""
    from pollen.store.connection import drop_stale_bindings

    url = redis_server.url(BROKER)
    broker = redis.Redis.from_url(url)
    own = {name: f"{name}\x06\x16\x06\x16{name}" for name in QUEUES}
    try:
        for name in QUEUES:
            broker.delete(f"_kombu.binding.{name}")
            broker.sadd(f"_kombu.binding.{name}", own[name])
        broker.sadd("_kombu.binding.pollen.submit", "pollen.submit\x06\x16\x06\x16pollen.poll")
        assert drop_stale_bindings(url, list(QUEUES)) == 1
        for name in QUEUES:
            assert broker.smembers(f"_kombu.binding.{name}") == {own[name].encode()}
        assert drop_stale_bindings(url, list(QUEUES)) == 0  # nothing stale: nothing removed
    finally:
        broker.close()
