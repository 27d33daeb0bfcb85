"""A provider whose API key is not set: its jobs fail at once with the setting's name, the
worker says so when it starts, and a request httpx refuses to send is never retried.

The dialect checks run without I/O; the rest against real parts: the simulator for a request
with an illegal header, and workers of their own (one without the Runware key) for the jobs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from pollen.backoff import PollPolicy
from pollen.errors import ProviderNotConfigured, TerminalProviderError
from pollen.local.servers import CallbackReceiver, RedisServer
from pollen.models import Job, JobStatus
from pollen.providers import REGISTRY, build_providers
from pollen.providers.base import env_var
from pollen.providers.http import send
from pollen.settings import Settings
from pollen.simulator import SimulatorServer
from tests.conftest import BROKER_DB, eventually
from tests.fleet import Fleet
from tests.helpers import video_request

KEYS = {
    "runware": "POLLEN_RUNWARE__API_KEY",
    "useapi_runway": "POLLEN_USEAPI__API_KEY",
    "comet_runway": "POLLEN_COMET__API_KEY",
}
WARNING = "runware: POLLEN_RUNWARE__API_KEY is not set; its jobs will fail"


# ----------------------------------------------------------------------- dialects, no I/O


def test_every_dialect_names_the_environment_variable_of_its_key() -> None:
    assert set(REGISTRY) == set(KEYS)
    for name, cls in REGISTRY.items():
        assert [env_var(*c) for c in cls.credentials] == [KEYS[name]], name


@pytest.mark.parametrize("name", sorted(KEYS))
def test_the_derived_variable_is_the_one_settings_read(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in KEYS.values():
        monkeypatch.delenv(variable, raising=False)
    assert build_providers(Settings())[name].missing_credentials() == [KEYS[name]]
    monkeypatch.setenv(KEYS[name], "sk-test")
    providers = build_providers(Settings())
    assert providers[name].missing_credentials() == []
    others = {n for n, p in providers.items() if p.missing_credentials()}
    assert others == set(KEYS) - {name}


@pytest.mark.parametrize("key", ["", "   ", "\n"])
def test_a_blank_key_is_missing(key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLLEN_RUNWARE__API_KEY", key)
    assert build_providers(Settings())["runware"].missing_credentials() == [KEYS["runware"]]


def _job(provider: str) -> Job:
    return Job(
        id="job-1",
        provider=provider,
        request={"taskType": "videoInference", "promptText": "x"},
        task_uuid="4e0b9a3c-2f7e-4d8e-9c1a-3b5d6f7a8b9c",
        provider_task_id="task-1",
        status=JobStatus.SUBMITTED,
        created_at=0.0,
        updated_at=0.0,
        policy=PollPolicy(),
    )


@pytest.mark.parametrize("name", sorted(KEYS))
def test_a_dialect_without_its_key_builds_no_request(name: str) -> None:
    provider = build_providers(Settings())[name]
    job = _job(name)
    builds: list[Callable[[], httpx.Request]] = [
        lambda: provider.submit_request(job, job.task_uuid),
        lambda: provider.status_request(job),
    ]
    for build in builds:
        with pytest.raises(ProviderNotConfigured) as caught:
            build()
        assert isinstance(caught.value, TerminalProviderError)
        assert (caught.value.code, caught.value.message) == (
            "missingCredentials",
            f"{KEYS[name]} is not set",
        )
    keyed = Settings.model_validate({provider.credentials[0][0]: {"api_key": "sk-test"}})
    request = build_providers(keyed)[name].status_request(job)
    assert request.headers["authorization"] == "Bearer sk-test"


GROUPS = {"runware": "runware", "useapi_runway": "useapi", "comet_runway": "comet"}


def _with_accounts(name: str, *keys: str) -> Settings:
    """``name``'s provider with accounts a, b, ... holding ``keys`` at their own URLs."""
    accounts = [
        {"name": chr(ord("a") + i), "api_key": key, "base_url": f"https://{chr(ord('a') + i)}.test"}
        for i, key in enumerate(keys)
    ]
    return Settings.model_validate({GROUPS[name]: {"accounts": accounts}})


@pytest.mark.parametrize("name", sorted(KEYS))
def test_every_request_goes_to_the_jobs_account(name: str) -> None:
    provider = build_providers(_with_accounts(name, "sk-a", "sk-b"))[name]
    job = _job(name)
    for account, key in ((None, "sk-a"), ("b", "sk-b"), ("gone", "sk-a")):
        mine = job.model_copy(update={"account": account})
        requests = [provider.submit_request(mine, mine.task_uuid), provider.status_request(mine)]
        if provider.supports_cancel:
            requests.append(provider.cancel_request(mine))
        for request in requests:
            assert request.headers["authorization"] == f"Bearer {key}"
            assert request.url.host == f"{key[-1]}.test"


def test_a_batched_request_belongs_to_one_account() -> None:
    provider = build_providers(_with_accounts("runware", "sk-a", "sk-b"))["runware"]
    jobs = [_job("runware").model_copy(update={"account": a}) for a in ("b", "b")]
    assert provider.status_batch_request(jobs).headers["authorization"] == "Bearer sk-b"
    mixed = [*jobs, _job("runware").model_copy(update={"account": "a"})]
    with pytest.raises(ValueError, match="several accounts"):
        provider.submit_batch_request(mixed)


def test_every_accounts_key_is_checked() -> None:
    provider = build_providers(_with_accounts("runware", "sk-a", " "))["runware"]
    missing = "POLLEN_RUNWARE__ACCOUNTS (account 'b': api_key)"
    assert provider.missing_credentials() == [missing]
    assert provider.missing_credentials("a") == []
    assert [a.name for a in provider.usable_accounts()] == ["a"]
    job = _job("runware")
    assert provider.unsendable(job) == []  # it can still go to account a
    assert provider.unsendable(job.model_copy(update={"account": "b"})) == [missing]
    with pytest.raises(ProviderNotConfigured, match="account 'b'"):
        provider.status_request(job.model_copy(update={"account": "b"}))
    keyless = build_providers(_with_accounts("runware", "", ""))["runware"]
    assert len(keyless.unsendable(job)) == 2


# ------------------------------------------------------------- http.send, a real server


@pytest.mark.parametrize("value", ["Bearer ", "Bearer sk-secret\n", " Bearer sk-secret"])
def test_a_header_httpx_refuses_is_terminal_and_does_not_leak_the_key(
    simulator: SimulatorServer, value: str
) -> None:
    request = httpx.Request(
        "POST", f"{simulator.url}/v1", json=[], headers={"Authorization": value}
    )
    with httpx.Client() as http, pytest.raises(ProviderNotConfigured) as caught:
        send(http, request, provider="runware", kind="submit")
    assert caught.value.code == "unsendableRequest"
    assert "header value" in caught.value.message
    assert "sk-secret" not in caught.value.message
    # The same server takes a well-formed request: the refusal was about the header only.
    good = httpx.Request("POST", f"{simulator.url}/v1", json=[], headers={"Authorization": "x"})
    with httpx.Client() as http:
        assert send(http, good).status_code < 500


# ------------------------------------------------------------------ workers of their own


@pytest.fixture
def fleet(
    worker_env: dict[str, str], redis_server: RedisServer, tmp_path: Path, clean: None
) -> Iterator[Fleet]:
    with Fleet(worker_env, redis_server.url(BROKER_DB), tmp_path) as built:
        yield built


def _completed_bodies(receiver: CallbackReceiver, path: str) -> list[dict[str, object]]:
    bodies = [r["json"] for r in receiver.received(path)]
    return [b for b in bodies if isinstance(b, dict) and b.get("type") == "job.completed"]


def test_a_worker_without_the_key_fails_the_job_at_once_and_says_so_at_start(
    fleet: Fleet, receiver: CallbackReceiver
) -> None:
    fleet.start("keyless", POLLEN_RUNWARE__API_KEY="")
    fleet.wait_ready("keyless")  # its "ready." line: start-up is over
    warnings = [line for line in fleet.log("keyless").splitlines() if "is not set" in line]
    assert len(warnings) == 1, warnings  # useapi and comet have their keys
    assert json.loads(warnings[0])["level"] == "warning"
    assert json.loads(warnings[0])["message"] == WARNING

    with fleet.client() as client:
        started = time.monotonic()
        job_id = client.submit(
            "runware", video_request([0.2]), callback_url=f"{receiver.url}/keyless"
        )
        job = client.wait(job_id, timeout=10)
        took = time.monotonic() - started
        assert job.status is JobStatus.FAILED
        assert job.error is not None
        assert (job.error.code, job.error.message) == (
            "missingCredentials",
            "POLLEN_RUNWARE__API_KEY is not set",
        )
        assert took < 5, took
        assert job.submit_attempts == 0  # nothing was sent
        completed = eventually(lambda: _completed_bodies(receiver, "/keyless"), timeout=10)
        time.sleep(1.0)  # a second completed callback would have arrived by now
        assert len(_completed_bodies(receiver, "/keyless")) == 1
        data = completed[0]["data"]
        assert isinstance(data, dict)
        assert data["status"] == "failed"
        assert data["error"]["code"] == "missingCredentials"


def test_a_keyless_poller_fails_the_job_instead_of_retrying(fleet: Fleet) -> None:
    """Submitted by a worker with the key, polled by one without: the poll fails the job."""
    queues = fleet.env
    fleet.start("submitter", queues=[queues["POLLEN_QUEUES__SUBMIT"]])
    fleet.start("poller", queues=[queues["POLLEN_QUEUES__POLL"]], POLLEN_RUNWARE__API_KEY="")
    fleet.wait_ready("submitter")
    fleet.wait_ready("poller")
    assert WARNING not in fleet.log("submitter")
    assert WARNING in fleet.log("poller")
    with fleet.client() as client:
        job_id = client.submit("runware", video_request([3.0]))
        job = client.wait(job_id, timeout=10)
        assert job.status is JobStatus.FAILED
        assert job.submit_attempts == 1 and job.provider_task_id
        assert job.error is not None
        assert (job.error.code, job.error.message) == (
            "missingCredentials",
            "POLLEN_RUNWARE__API_KEY is not set",
        )
