"""Provider push as a wake-up: the push makes pollen poll the job at once through the fenced
poll; a push is never the result, and a job whose push never comes still finishes by polling.

Real parts: a Redis server (the session's, on databases of this module's own), a pollen
worker, the ingress served by uvicorn, and a simulator of this module's own that pushes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import uvicorn
from bs4 import BeautifulSoup

from pollen import JobStatus, Pollen
from pollen.ingress.app import build_app
from pollen.local.servers import (
    CallbackReceiver,
    DashboardServer,
    RedisServer,
    ThreadedApp,
    Worker,
    free_port,
)
from pollen.providers import push as tokens
from pollen.providers.base import Submission
from pollen.settings import IngressSettings, Settings
from pollen.simulator import SimulatorConfig, SimulatorServer
from pollen.store import keys
from pollen.worker import submits
from pollen.worker.runtime import build_deps
from tests.conftest import eventually, settings_from
from tests.helpers import sim_stats, video_request

pytestmark = pytest.mark.integration

STORE_DB, BROKER_DB = 2, 3
#: polls so slow that a job finishing within SLOW_FIRST_POLL seconds was woken by a push
SLOW_FIRST_POLL = 6.0
SLOW = {"initial_delay": SLOW_FIRST_POLL, "interval": SLOW_FIRST_POLL, "max_delay": 6.0}


class IngressServer(ThreadedApp):
    """``pollen ingress``'s app, served by uvicorn on a thread of the test process."""

    def __init__(self, settings: Settings, port: int) -> None:
        self.app = build_app(settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning")
        super().__init__(config, name="ingress")

    def counts(self) -> dict[tuple[str, str], float]:
        """``pollen_pushes_total`` by (provider, outcome), from ``GET /metrics``."""
        out: dict[tuple[str, str], float] = {}
        for line in httpx.get(f"{self.url}/metrics").text.splitlines():
            if line.startswith("pollen_pushes_total{"):
                labels, value = line[len("pollen_pushes_total{") :].split("} ")
                parts = dict(p.split("=") for p in labels.split(","))
                out[(parts["provider"].strip('"'), parts["outcome"].strip('"'))] = float(value)
        return out


@pytest.fixture(scope="module")
def pusher_sim() -> Iterator[SimulatorServer]:
    config = SimulatorConfig(duration_min=0.2, duration_max=0.4, seed=11, timeout_seconds=5)
    with SimulatorServer(config) as sim:
        yield sim


@pytest.fixture(scope="module")
def ingress_url() -> str:
    """Chosen before the ingress starts: the workers' settings name it."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def push_env(
    worker_env: dict[str, str],
    redis_server: RedisServer,
    pusher_sim: SimulatorServer,
    tmp_path_factory: pytest.TempPathFactory,
    ingress_url: str,
) -> dict[str, str]:
    heartbeat = tmp_path_factory.mktemp("push-heartbeat") / "worker.heartbeat"
    return {
        **worker_env,
        "POLLEN_REDIS_URL": redis_server.url(STORE_DB),
        "POLLEN_BROKER_URL": redis_server.url(BROKER_DB),
        "POLLEN_HEARTBEAT_FILE": str(heartbeat),
        "POLLEN_METRICS_PORT": str(free_port()),
        "POLLEN_RUNWARE__BASE_URL": f"{pusher_sim.url}/v1",
        "POLLEN_USEAPI__BASE_URL": pusher_sim.url,
        "POLLEN_COMET__BASE_URL": pusher_sim.url,
        "POLLEN_INGRESS__PUBLIC_URL": ingress_url,
    }


@pytest.fixture(scope="module")
def push_settings(push_env: dict[str, str]) -> Settings:
    return settings_from(push_env)


@pytest.fixture(scope="module")
def ingress(push_settings: Settings, ingress_url: str) -> Iterator[IngressServer]:
    with IngressServer(push_settings, int(ingress_url.rsplit(":", 1)[1])) as server:
        yield server


@pytest.fixture(scope="module")
def push_worker(
    push_env: dict[str, str],
    redis_server: RedisServer,
    ingress: IngressServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Worker]:
    log = tmp_path_factory.mktemp("push-worker") / "worker.log"
    with Worker(push_env, name="push-worker", concurrency=8, log_file=str(log)) as proc:
        try:
            proc.wait_ready(redis_server.url(BROKER_DB))
        except RuntimeError:
            print(Path(log).read_text())
            raise
        yield proc


@pytest.fixture
def store(redis_server: RedisServer, pusher_sim: SimulatorServer) -> Iterator[Any]:
    client = redis.Redis.from_url(redis_server.url(STORE_DB), decode_responses=True)
    epoch = client.get(keys.EPOCH)
    client.flushdb()
    if epoch is not None:
        client.set(keys.EPOCH, epoch)
    httpx.post(f"{pusher_sim.url}/_sim/reset").raise_for_status()
    _sim_config(pusher_sim, push_loss=0.0, push_duplicate=0.0, push_reorder=0.0, push_delay=0.02)
    yield client
    client.close()


@pytest.fixture
def pollen(push_settings: Settings, store: Any) -> Iterator[Pollen]:
    with Pollen(push_settings) as client:
        yield client


def _sim_config(sim: SimulatorServer, **changes: Any) -> None:
    httpx.patch(f"{sim.url}/_sim/config", json=changes).raise_for_status()


def _image(duration: float) -> dict[str, Any]:
    return video_request([duration]) | {"taskType": "imageInference", "model": "runware:101@1"}


def _finished(pollen: Pollen, job_id: str) -> Any:
    job = pollen.get(job_id)
    return job if job.terminal else None


def _token(store: Any, job_id: str) -> str:
    return str(eventually(lambda: store.hget(keys.job(job_id), "push_token"), what="a token"))


def test_a_push_wakes_the_job_up_long_before_its_first_poll(
    push_worker: Worker, pollen: Pollen, store: Any, ingress: IngressServer,
    pusher_sim: SimulatorServer, push_settings: Settings,
) -> None:  # fmt: skip
    before = ingress.counts().get(("runware", "polled"), 0)
    started = time.time()
    job_id = pollen.submit("runware", _image(0.3), poll=SLOW)
    job = eventually(lambda: _finished(pollen, job_id), timeout=SLOW_FIRST_POLL - 1)
    assert job.status is JobStatus.SUCCEEDED
    assert job.finished_at - started < SLOW_FIRST_POLL - 1  # no scheduled poll was due yet
    assert job.polls == 1  # the push's poll: the provider said it, not the push
    assert len(job.results) == 1 and job.results[0].url
    # The provider was asked to push to this job's own URL; the audit never shows the token.
    token = store.hget(keys.job(job_id), "push_token")
    assert token and tokens.job_of(token) == job_id
    sent = json.loads(store.hget(keys.job(job_id), "sent_request") or "[]")
    assert sent[0]["webhookURL"] == f"{ingress.url}/push/runware/{tokens.redact(token)}"
    assert token not in json.dumps(sent)
    [push] = [json.loads(p) for p in store.lrange(keys.pushes(job_id), 0, -1)]
    assert json.loads(push["body"])["data"][0]["taskUUID"] == job.task_uuid
    assert store.hget(keys.job(job_id), "pushes") == "1"
    assert ingress.counts()[("runware", "polled")] == before + 1
    assert sim_stats(pusher_sim.url)["pushes"]["sent"] == 1
    # The dashboard's audit trail shows the push beside the provider's answers.
    with DashboardServer(push_settings, None, free_port()) as dashboard:
        page = BeautifulSoup(httpx.get(f"{dashboard.url}/jobs/{job_id}").text, "html.parser")
    [shown] = page.select("#audit details.push")
    summary = shown.select_one("summary")
    assert summary is not None and "provider push 1" in summary.get_text()
    assert job.task_uuid in shown.get_text() and token not in str(page)


def test_useapi_reply_url_wakes_the_job_up(
    push_worker: Worker, pollen: Pollen, store: Any, ingress: IngressServer
) -> None:
    request = {"text_prompt": "a slow pan over a harbour", "simulate": {"duration": 0.3}}
    job_id = pollen.submit("useapi_runway", request, poll=SLOW)
    job = eventually(lambda: _finished(pollen, job_id), timeout=SLOW_FIRST_POLL - 1)
    assert job.status is JobStatus.SUCCEEDED and job.polls == 1
    sent = json.loads(store.hget(keys.job(job_id), "sent_request") or "{}")
    assert sent["replyRef"] == job_id
    assert sent["replyUrl"].startswith(f"{ingress.url}/push/useapi_runway/")


def test_a_lost_push_costs_only_lag_polling_finishes_the_job(
    push_worker: Worker, pollen: Pollen, pusher_sim: SimulatorServer
) -> None:
    _sim_config(pusher_sim, push_loss=1.0)
    started = time.time()
    job_id = pollen.submit("runware", _image(0.3), poll={**SLOW, "initial_delay": 2.0})
    job = eventually(lambda: _finished(pollen, job_id), timeout=15)
    assert job.status is JobStatus.SUCCEEDED
    assert job.finished_at - started >= 2.0  # the scheduled poll, not a push, finished it
    assert sim_stats(pusher_sim.url)["pushes"]["lost"] == 1


def test_duplicated_and_reordered_pushes_end_the_job_once(
    push_worker: Worker, pollen: Pollen, store: Any, pusher_sim: SimulatorServer,
    ingress: IngressServer,
) -> None:  # fmt: skip
    _sim_config(pusher_sim, push_duplicate=1.0, push_reorder=0.3)
    with CallbackReceiver() as receiver:
        job_id = pollen.submit(
            "runware", video_request([0.2, 0.4, 0.6]), poll=SLOW,
            callback_url=f"{receiver.url}/dup",
        )  # fmt: skip
        job = eventually(lambda: _finished(pollen, job_id), timeout=SLOW_FIRST_POLL - 1)
        assert job.status is JobStatus.SUCCEEDED and len(job.results) == 3
        eventually(lambda: sim_stats(pusher_sim.url)["pushes"].get("sent", 0) == 6, timeout=5)
        time.sleep(0.5)  # any second completion would be on its way by now
        completions = [r for r in receiver.received("/dup") if r["json"]["type"] == "job.completed"]
    assert len(completions) == 1
    assert sim_stats(pusher_sim.url)["submits_by_task"] == {job.task_uuid: 1}
    assert int(store.hget(keys.job(job_id), "pushes") or 0) <= 6
    assert pollen.get(job_id).polls <= 6  # at most one poll per push, fenced


def _post(ingress: IngressServer, provider: str, token: str, body: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{ingress.url}/push/{provider}/{token}", content=content)


def test_forged_foreign_and_replayed_pushes_are_answered_and_never_acted_on(
    push_worker: Worker, pollen: Pollen, store: Any, ingress: IngressServer,
    pusher_sim: SimulatorServer,
) -> None:  # fmt: skip
    _sim_config(pusher_sim, push_loss=1.0)  # only this test's own pushes reach the ingress
    slow = {"initial_delay": 30.0, "interval": 30.0, "max_delay": 30.0}
    job_a = pollen.submit("runware", video_request([60.0]), poll=slow)
    job_b = pollen.submit("runware", video_request([60.0]), poll=slow)
    token_a = _token(store, job_a)
    eventually(lambda: pollen.get(job_a).status is JobStatus.SUBMITTED, what="A submitted")
    before = ingress.counts()

    # A forged token: the job's id in the right shape, a random secret part.
    forged = tokens.new_token(job_a)
    assert _post(ingress, "runware", forged, {"data": []}).status_code == 404
    # The right token on the wrong provider's path.
    assert _post(ingress, "useapi_runway", token_a, {"data": []}).status_code == 404
    # Not a token at all, and a job that does not exist.
    assert _post(ingress, "runware", "nonsense", {}).status_code == 404
    assert _post(ingress, "runware", tokens.new_token("no-such-job"), {}).status_code == 404
    # A body claiming job B finished, pushed with A's token: A is polled (the provider says
    # it is still running); B is not touched.
    b = pollen.get(job_b)
    claim = {"data": [{"taskUUID": b.task_uuid, "status": "success", "videoURL": "http://x/y"}]}
    answer = _post(ingress, "runware", token_a, claim)
    assert (answer.status_code, answer.json()) == (202, {"outcome": "polled", "job_id": job_a})
    eventually(lambda: pollen.get(job_a).polls == 1, what="the push's poll of A")
    a = pollen.get(job_a)
    assert a.status is JobStatus.PROCESSING and a.results == []
    assert pollen.get(job_b).polls == 0 and pollen.get(job_b).results == []
    # A token naming another key of A's (its push list) is no job's: unknown, not an error.
    assert store.exists(keys.pushes(job_a))
    assert _post(ingress, "runware", tokens.new_token(f"{job_a}:pushes"), {}).status_code == 404

    after = ingress.counts()
    assert after[("runware", "forged")] - before.get(("runware", "forged"), 0) == 1
    assert after[("useapi_runway", "forged")] - before.get(("useapi_runway", "forged"), 0) == 1
    assert after[("runware", "unknown")] - before.get(("runware", "unknown"), 0) == 3

    # Replayed after the job ended: answered 200, no provider request.
    pollen.cancel(job_a)
    requests = sim_stats(pusher_sim.url)["requests"]
    replay = _post(ingress, "runware", token_a, claim)
    assert (replay.status_code, replay.json()) == (200, {"outcome": "finished"})
    assert sim_stats(pusher_sim.url)["requests"] == requests
    assert store.hget(keys.job(job_a), "pushes") == "1"  # the finished job's push not kept


def test_pushes_of_one_moment_are_polled_in_one_provider_request(
    push_worker: Worker, pollen: Pollen, store: Any, ingress: IngressServer,
    pusher_sim: SimulatorServer,
) -> None:  # fmt: skip
    _sim_config(pusher_sim, push_loss=1.0)  # only this test's own pushes reach the ingress
    slow = {"initial_delay": 30.0, "interval": 30.0, "max_delay": 30.0}
    jobs = [pollen.submit("runware", video_request([60.0]), poll=slow) for _ in range(5)]
    tokens_by_job = {job_id: _token(store, job_id) for job_id in jobs}
    eventually(
        lambda: all(pollen.get(j).status is JobStatus.SUBMITTED for j in jobs), what="submitted"
    )
    before = sim_stats(pusher_sim.url)
    # Hold the first push's publish until the other four pushes are waiting behind it, as a
    # slow broker would: they must go together in the next message.
    wakes = ingress.app.state.ingress.wakes
    real, gate, held = wakes.publish, threading.Event(), threading.Event()

    async def slow_first(message: Any) -> None:
        if not held.is_set():
            held.set()
            await asyncio.to_thread(gate.wait, 10)
        await real(message)

    wakes.publish = slow_first
    try:
        with ThreadPoolExecutor(len(jobs)) as pool:
            first = pool.submit(_post, ingress, "runware", tokens_by_job[jobs[0]], {"data": []})
            assert held.wait(10)
            rest = [
                pool.submit(_post, ingress, "runware", tokens_by_job[job_id], {"data": []})
                for job_id in jobs[1:]
            ]
            eventually(lambda: len(wakes._batches) == 1 and len(wakes._batches[0][0]) == 4,
                       what="four pushes waiting")  # fmt: skip
            gate.set()
            answers = [first.result(10), *(f.result(10) for f in rest)]
    finally:
        wakes.publish = real
    assert [a.status_code for a in answers] == [202] * len(jobs)
    eventually(lambda: all(pollen.get(j).polls == 1 for j in jobs), what="each job polled once")
    after = sim_stats(pusher_sim.url)
    status = after["requests_by_kind"]["status"] - before["requests_by_kind"].get("status", 0)
    items = after["tasks"]["getResponse"] - before["tasks"].get("getResponse", 0)
    assert (status, items) == (2, 5)  # the first alone, then one request about the other four


def test_oversized_and_malformed_bodies_are_refused(
    push_worker: Worker, pollen: Pollen, store: Any, ingress: IngressServer,
    pusher_sim: SimulatorServer, push_settings: Settings,
) -> None:  # fmt: skip
    _sim_config(pusher_sim, push_loss=1.0)
    job_id = pollen.submit("runware", video_request([60.0]), poll={"initial_delay": 30.0})
    token = _token(store, job_id)
    limit = push_settings.ingress.max_body_bytes
    big = b'{"pad": "' + b"x" * limit + b'"}'
    assert _post(ingress, "runware", token, big).status_code == 413
    chunks = (big[i : i + 65536] for i in range(0, len(big), 65536))  # no Content-Length
    streamed = httpx.post(f"{ingress.url}/push/runware/{token}", content=chunks)
    assert streamed.status_code == 413
    assert _post(ingress, "runware", token, b"{not json").status_code == 400
    just_fits = b'{"pad": "' + b"x" * (limit - 11) + b'"}'
    assert len(just_fits) == limit
    assert _post(ingress, "runware", token, just_fits).status_code == 202
    [kept] = store.lrange(keys.pushes(job_id), 0, -1)
    assert json.loads(kept)["truncated"] is True and json.loads(kept)["bytes"] == limit
    assert ingress.counts()[("runware", "oversized")] >= 2


def test_a_push_before_the_submit_answer_is_stored_polls_at_once(
    push_settings: Settings, pollen: Pollen, store: Any, ingress: IngressServer
) -> None:
    """Deterministic: the push comes between the provider taking the task and pollen storing
    its answer (the submit step is called here, with the push in between)."""
    deps = build_deps(push_settings)
    try:
        from pollen import payloads

        job_id, _ = payloads.accept(
            push_settings, deps.store, {"provider": "runware", "request": _image(30.0),
                                        "poll": SLOW}, now=time.time(),
        )  # fmt: skip
        real_submit = deps.calls.submit_many

        def submit_then_push(provider: str, jobs: list[Any], arrived: Any, **_: Any) -> Any:
            def push_then_record(indexes: Any, answers: Any) -> None:
                token = store.hget(keys.job(job_id), "push_token") or ""
                answer = _post(ingress, "runware", token, {"data": []})
                assert answer.json() == {"outcome": "noted", "job_id": job_id}
                arrived(indexes, answers)

            return real_submit(provider, jobs, push_then_record)

        deps.calls.submit_many = submit_then_push  # type: ignore[method-assign,assignment]
        started = time.time()
        out = submits.submit_batch(deps, [job_id])
        [due] = out.polls
        assert due.due - started < 1.0  # not SLOW_FIRST_POLL: the push said there is news
        # Without the push, the first poll waits its policy's first delay.
        job_2, _ = payloads.accept(
            push_settings, deps.store, {"provider": "runware", "request": _image(30.0),
                                        "poll": SLOW}, now=time.time(),
        )  # fmt: skip
        deps.calls.submit_many = real_submit  # type: ignore[method-assign]
        [due_2] = submits.submit_batch(deps, [job_2]).polls
        assert due_2.due - time.time() > SLOW_FIRST_POLL * 0.7
    finally:
        deps.http.close()
        deps.store.redis.close()


def test_push_requests_and_the_relaxed_schedule(push_settings: Settings, store: Any) -> None:
    """What the submit asks of each provider; a producer's own push URL is left alone; with
    ``poll_max_delay`` a pushed job's cap grows, other jobs keep theirs."""
    relaxed = push_settings.model_copy(
        update={"ingress": IngressSettings(public_url="https://hooks.example", poll_max_delay=300)}
    )
    deps = build_deps(relaxed)
    try:
        from pollen import payloads

        ids = []
        for provider, request in [
            ("runware", _image(30.0)),
            ("runware", {**_image(30.0), "webhookURL": "https://mine.example/hook"}),
            (
                "comet_runway",
                {
                    "model": "gen4_turbo",
                    "promptText": "a harbour at dawn",
                    "promptImage": "https://example.invalid/cat.png",
                },
            ),
        ]:
            job_id, _ = payloads.accept(relaxed, deps.store, {"provider": provider,
                                        "request": request}, now=time.time())  # fmt: skip
            ids.append(job_id)

        def acknowledge(provider: str, jobs: list[Any], *_: Any, **__: Any) -> list[Submission]:
            return [Submission(f"task-{job.id}", {}) for job in jobs]

        deps.calls.submit_many = acknowledge  # type: ignore[method-assign,assignment]
        submits.submit_batch(deps, ids)
        own, producers, comet = (deps.store.lifecycle.get(i) for i in ids)
        token = own.push_token or ""
        sent = deps.providers["runware"].submit_request(own, own.task_uuid)
        [task] = json.loads(sent.content)
        assert task["webhookURL"] == f"https://hooks.example/push/runware/{token}"
        assert own.policy.max_delay == 300
        sent = deps.providers["runware"].submit_request(producers, producers.task_uuid)
        assert json.loads(sent.content)[0]["webhookURL"] == "https://mine.example/hook"
        # ... so no push will come for that job: no token, and its own poll cap
        assert producers.push_token is None
        assert producers.policy.max_delay == push_settings.poll.max_delay
        assert comet.push_token is None  # CometAPI documents no push
        assert comet.policy.max_delay == push_settings.poll.max_delay
        assert "push_token" not in own.model_dump()  # never in a status or callback body
    finally:
        deps.http.close()
        deps.store.redis.close()


def test_tokens_round_trip_and_refuse_garbage() -> None:
    token = tokens.new_token("job:1.a-b")
    assert tokens.job_of(token) == "job:1.a-b"
    assert tokens.new_token("job:1.a-b") != token
    assert tokens.redact(token).endswith(".***") and token.split(".")[1] not in tokens.redact(token)
    encoded = base64.urlsafe_b64encode(b"x").decode().rstrip("=")
    spaced = tokens.new_token("not a job id")  # the id must be one pollen accepts
    for bad in ["", "abc", f"{encoded}.short", "a.b.c", "%%%." + "x" * 30, "x" * 300, spaced]:
        assert tokens.job_of(bad) is None, bad


def test_the_ingress_command_serves_and_refuses_bad_settings(push_env: dict[str, str]) -> None:
    from tests.test_cli import assert_user_error, pollen

    bad = {**push_env, "POLLEN_INGRESS__PUBLIC_URL": "hooks.example.com"}
    assert_user_error(pollen(bad, "ingress"), "POLLEN_INGRESS__PUBLIC_URL: Value error, must be")
    assert_user_error(pollen(push_env, "ingress", "--port", "0"), "Invalid value", code=2)
    with_path = {**push_env, "POLLEN_INGRESS__PUBLIC_URL": "https://hooks.example.com/push/"}
    assert_user_error(pollen(with_path, "ingress"), "give the ingress's base URL")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = str(taken.getsockname()[1])
        result = pollen(push_env, "ingress", "--host", "127.0.0.1", "--port", busy)
        assert_user_error(result, f"cannot listen on 127.0.0.1:{busy}")
    port = free_port()
    env = {**os.environ, **push_env}
    argv = [sys.executable, "-m", "pollen.cli", "ingress", "--host", "127.0.0.1", "--port",
            str(port)]  # fmt: skip
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        try:
            url = f"http://127.0.0.1:{port}"
            eventually(lambda: _answers(f"{url}/readyz"), timeout=20, what="pollen ingress")
            answer = httpx.post(f"{url}/push/runware/{tokens.new_token('nope')}", content=b"{}")
            assert (answer.status_code, answer.json()) == (404, {"outcome": "unknown"})
        finally:
            proc.terminate()
            proc.wait(10)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url).status_code == 200
    except httpx.TransportError:
        return False
