"""Re-hosting (POLLEN_STORAGE__URL): pollen's own copy of every result's file.

Real parts only: workers started here with storage settings of their own (their own store and
broker databases, so the session's worker, which has re-hosting off, never touches their
jobs), the simulator serving the result files, a local directory and an S3-compatible server
(moto's, started in-process on a free port: a pip install, where MinIO needs a binary).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import pytest
import redis
from pydantic import ValidationError

from pollen import Pollen
from pollen.local.servers import CallbackReceiver, RedisServer, Worker, free_port
from pollen.models import Job, JobStatus, StoredCopy
from pollen.settings import StorageSettings
from pollen.simulator import SimulatorServer
from pollen.storage import media_type, object_key
from tests.conftest import eventually, settings_from

pytestmark = pytest.mark.integration

#: the store and broker databases of the module's directory worker, and of the others
FILES_DBS, OWN_DBS = (10, 11), (12, 13)
BUCKET = "pollen-results"


def image_request(prompt: str = "a heron at dawn") -> dict[str, Any]:
    return {
        "taskType": "imageInference",
        "model": "runware:101@1",
        "positivePrompt": prompt,
        "width": 512,
        "height": 512,
    }


def video_request() -> dict[str, Any]:
    return {
        "taskType": "videoInference",
        "model": "klingai:5@3",
        "positivePrompt": "a fox in snow",
        "simulate": {"durations": [0.2]},
    }


@contextmanager
def rehost_worker(
    worker_env: dict[str, str],
    redis_server: RedisServer,
    log: Path,
    storage: dict[str, str],
    dbs: tuple[int, int] = OWN_DBS,
) -> Iterator[Pollen]:
    """A worker with ``storage`` (``POLLEN_STORAGE__<NAME>`` values) on databases of its own
    (``dbs``: store, broker), and a client of the same store."""
    store_db, broker_db = dbs
    for db in dbs:
        flushed = redis.Redis.from_url(redis_server.url(db))
        flushed.flushdb()
        flushed.close()
    env = {
        **worker_env,
        "POLLEN_REDIS_URL": redis_server.url(store_db),
        "POLLEN_BROKER_URL": redis_server.url(broker_db),
        "POLLEN_HEARTBEAT_FILE": str(log.with_suffix(".heartbeat")),
        "POLLEN_METRICS_PORT": str(free_port()),
        "POLLEN_TICK_INTERVAL": "0.3",
        "POLLEN_STORAGE__SCHEDULE": "[0, 0.3, 0.6]",
        **{f"POLLEN_STORAGE__{name.upper()}": value for name, value in storage.items()},
    }
    with Worker(env, name="rehost", concurrency=4, log_file=str(log)) as proc:
        try:
            proc.wait_ready(redis_server.url(broker_db), timeout=60)
            with Pollen(settings_from(env)) as client:
                yield client
        except BaseException:
            print(log.read_text())
            raise


def copy_of(client: Pollen, job_id: str, *, final: bool = True) -> StoredCopy:
    """The job's first result's copy, once it is stored or failed (``final``)."""

    def check() -> StoredCopy | None:
        job = client.get(job_id)
        stored = job.results[0].stored if job.results else None
        if stored is None or (final and stored.status == "pending"):
            return None
        return stored

    found: StoredCopy = eventually(check, timeout=30, what=f"the copy of {job_id}'s result")
    return found


def finished(client: Pollen, job_id: str) -> Job:
    job = client.wait(job_id, timeout=30)
    assert job.status is JobStatus.SUCCEEDED, job
    return job


def path_of(url: str) -> Path:
    assert url.startswith("file://"), url
    return Path(unquote(urlsplit(url).path))


@pytest.fixture(scope="module")
def files(
    worker_env: dict[str, str],
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Pollen, Path]]:
    """A worker copying to a local directory, files up to 4096 bytes (the simulator's images,
    small PNGs, pass; its videos, 32 KiB, do not), result URLs on 127.0.0.0/8 allowed."""
    root = tmp_path_factory.mktemp("stored")
    log = tmp_path_factory.mktemp("rehost") / "files.log"
    storage = {"url": root.as_uri(), "max_bytes": "4096", "allow_cidrs": '["127.0.0.0/8"]'}
    with rehost_worker(worker_env, redis_server, log, storage, FILES_DBS) as client:
        yield client, root


def test_the_copy_lands_in_the_directory_with_the_same_bytes_and_an_event(
    files: tuple[Pollen, Path], receiver: CallbackReceiver
) -> None:
    client, root = files
    job_id = client.submit("runware", image_request(), callback_url=f"{receiver.url}/stored")
    job = finished(client, job_id)
    result = job.results[0]
    assert result.stored is not None and result.stored.status in ("pending", "stored")
    copy = copy_of(client, job_id)
    assert copy.status == "stored", copy
    original = httpx.get(result.url or "").content
    kept = path_of(copy.url or "").read_bytes()
    assert kept == original
    assert copy.sha256 == hashlib.sha256(original).hexdigest()
    assert copy.size == len(original)
    assert copy.content_type == "image/png"
    assert copy.attempts == 1
    assert path_of(copy.url or "").is_relative_to(root)
    assert client.get(job_id).results[0].url == result.url  # the provider's URL stays beside it

    def events() -> list[dict[str, Any]]:
        kinds = [r["json"]["type"] for r in receiver.received("/stored")]
        return [r for r in receiver.received("/stored") if "job.result_stored" in kinds]

    posts = eventually(events, what="the result_stored event")
    completed, stored = (r["json"] for r in posts[:2])
    assert completed["type"] == "job.completed"
    assert completed["data"]["results"][0]["stored"]["status"] in ("pending", "stored")
    assert stored["type"] == "job.result_stored"
    assert stored["data"]["index"] == 1
    assert stored["data"]["result"]["stored"]["url"] == copy.url
    assert stored["data"]["result"]["stored"]["sha256"] == copy.sha256
    assert posts[1]["headers"]["webhook-id"] == f"msg_{job_id}_result_stored_{result.id}"
    assert posts[1]["headers"]["webhook-signature"].startswith("v1,")


def test_a_file_over_the_size_limit_fails_its_copy_not_its_job(
    files: tuple[Pollen, Path],
) -> None:
    client, _ = files
    job_id = client.submit("runware", video_request())
    finished(client, job_id)
    copy = copy_of(client, job_id)
    assert copy.status == "failed"
    assert "over the 4096-byte limit" in (copy.error or ""), copy
    assert copy.attempts == 1  # never retried: it cannot work
    assert copy.url is None


def test_a_result_url_that_404s_fails_its_copy_not_its_job(
    files: tuple[Pollen, Path], simulator: SimulatorServer
) -> None:
    client, _ = files
    config = f"{simulator.url}/_sim/config"
    httpx.patch(config, json={"media_url": f"{simulator.url}/media/expired"}).raise_for_status()
    try:
        job_id = client.submit("runware", image_request("a gone file"))
        eventually(lambda: client.status(job_id) != JobStatus.QUEUED, what="the submit")
    finally:
        httpx.patch(config, json={"media_url": None}).raise_for_status()
    job = finished(client, job_id)
    assert "/media/expired/" in (job.results[0].url or "")
    copy = copy_of(client, job_id)
    assert copy.status == "failed"
    assert "HTTP 404" in (copy.error or ""), copy
    assert copy.attempts == 1


def test_a_result_url_on_a_private_address_is_refused(
    worker_env: dict[str, str], redis_server: RedisServer, tmp_path: Path
) -> None:
    """The callbacks' allowance of 127.0.0.0/8 is not the fetch's: POLLEN_STORAGE__ALLOW_CIDRS
    is unset here, so the simulator's loopback URLs are refused, never fetched."""
    storage = {"url": (tmp_path / "out").as_uri()}
    with rehost_worker(worker_env, redis_server, tmp_path / "private.log", storage) as client:
        job_id = client.submit("runware", image_request())
        finished(client, job_id)
        copy = copy_of(client, job_id)
    assert copy.status == "failed"
    assert "refused by the address policy" in (copy.error or ""), copy
    assert "loopback" in (copy.error or "")
    assert "POLLEN_STORAGE__ALLOW_CIDRS" in (copy.error or "")
    assert copy.attempts == 1
    assert not (tmp_path / "out").exists()


@pytest.fixture
def s3_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


S3_STORAGE = {
    "s3_region": "us-east-1",
    "s3_access_key_id": "test",
    "s3_secret_access_key": "test",
    "allow_cidrs": '["127.0.0.0/8"]',
}


def public_bucket(endpoint: str) -> None:
    """Create the bucket, readable by anyone (as docs/results.md suggests for stored URLs that are
    opened directly; a private bucket answers 403 to a plain GET)."""
    import boto3

    s3 = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id="test", aws_secret_access_key="test",
    )  # fmt: skip
    s3.create_bucket(Bucket=BUCKET)
    statement = {
        "Effect": "Allow",
        "Principal": "*",
        "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{BUCKET}/*",
    }
    policy = {"Version": "2012-10-17", "Statement": [statement]}
    s3.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps(policy))


def test_the_copy_lands_in_s3_and_its_url_serves_the_same_bytes(
    worker_env: dict[str, str], redis_server: RedisServer, s3_server: str, tmp_path: Path
) -> None:
    public_bucket(s3_server)
    storage = {"url": f"s3://{BUCKET}/copies", "s3_endpoint_url": s3_server, **S3_STORAGE}
    with rehost_worker(worker_env, redis_server, tmp_path / "s3.log", storage) as client:
        job_id = client.submit("runware", image_request())
        job = finished(client, job_id)
        copy = copy_of(client, job_id)
    assert copy.status == "stored", copy
    generation = job.results[0].id
    # stored under the media type the host declared (the simulator's images are PNGs)
    assert copy.url == f"{s3_server}/{BUCKET}/copies/{job_id}/{generation}.png"
    served = httpx.get(copy.url)
    original = httpx.get(job.results[0].url or "").content
    assert served.content == original
    assert served.headers["content-type"] == "image/png"
    assert hashlib.sha256(served.content).hexdigest() == copy.sha256


def test_storage_down_the_job_completes_and_the_copy_is_retried_then_failed(
    worker_env: dict[str, str], redis_server: RedisServer, tmp_path: Path
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens: the storage is down
    storage = {"url": f"s3://{BUCKET}", "s3_endpoint_url": nowhere, **S3_STORAGE}
    with rehost_worker(worker_env, redis_server, tmp_path / "down.log", storage) as client:
        job_id = client.submit("runware", image_request())
        job = finished(client, job_id)  # not held up by the copy
        assert job.results[0].stored is not None
        copy = copy_of(client, job_id)
    assert copy.status == "failed", copy
    assert copy.attempts == 3  # POLLEN_STORAGE__SCHEDULE has three delays
    assert "refused the upload" in (copy.error or "")
    assert "gave up after 3 attempts" in (copy.error or "")


def test_storage_settings_refuse_an_unknown_scheme_and_a_relative_directory() -> None:
    with pytest.raises(ValidationError, match="must start with file:// or s3://"):
        StorageSettings(url="ftp://example.com/out")
    with pytest.raises(ValidationError, match="absolute path"):
        StorageSettings(url="file://relative/dir")
    with pytest.raises(ValidationError, match="needs a bucket"):
        StorageSettings(url="s3:///prefix")
    assert StorageSettings().url is None  # off by default


def test_object_keys_come_from_the_ids_and_only_media_types_are_kept() -> None:
    assert object_key("job-1", "gen-1", "video/mp4") == "job-1/gen-1.mp4"
    assert object_key("a/b", "c d", "image/png") == "a_b/c_d.png"
    assert object_key("j", "g", "application/x-unknown") == "j/g"
    assert media_type("image/jpeg; charset=binary") == "image/jpeg"
    # A result host must not get a page or a script served from pollen's storage.
    for hostile in ("text/html", "image/svg+xml", "application/javascript", ""):
        assert media_type(hostile) == "application/octet-stream"
        assert object_key("j", "g", media_type(hostile)) == "j/g"


def test_stored_copy_json_round_trips() -> None:
    copy = StoredCopy(status="stored", url="file:///x", sha256="0" * 64, size=3, attempts=1)
    assert StoredCopy.model_validate(json.loads(copy.model_dump_json())) == copy


def test_an_interrupted_copy_counts_its_attempt_and_a_dead_copier_cannot_loop(
    settings: Any, clean: None, tmp_path: Path
) -> None:
    """Driven step by step on the session's store and simulator (no worker copies: the
    session's worker has re-hosting off). A copy that raises something unexpected is recorded
    as a failed attempt; a claim that is never recorded (its worker was killed) still counts,
    so the copy ends ``failed`` instead of being tried until the job expires."""
    from pollen import payloads
    from pollen.worker import batch, rehost, submits
    from pollen.worker.runtime import build_deps

    storage = StorageSettings(url=tmp_path.as_uri(), allow_cidrs=["127.0.0.0/8"],
                              schedule=[0, 0.05])  # fmt: skip
    deps = build_deps(settings.model_copy(update={"storage": storage}))
    try:
        payload = {"provider": "runware", "request": image_request()}
        job_id, _ = payloads.accept(deps.settings, deps.store, payload, now=deps.clock())
        submits.submit_batch(deps, [job_id])

        def polled() -> str | None:
            job = deps.store.lifecycle.get(job_id)
            if not job.results:
                batch.poll_batch(deps, [(job_id, job.poll_seq)])
                return None
            return job.results[0].id

        generation = eventually(polled, timeout=10, interval=0.1, what="the image")

        def fail(*args: Any, **kwargs: Any) -> str:
            raise RuntimeError("disk on fire")

        deps.storage.put = fail  # type: ignore[union-attr,method-assign]
        outcome = rehost.copy_result(deps, job_id, generation)
        copy = deps.store.lifecycle.get(job_id).results[0].stored
        assert outcome.state == "pending" and copy is not None
        assert copy.attempts == 1 and "copy interrupted: RuntimeError('disk on fire')" in (
            copy.error or ""
        )
        # A copier that claims the copy and dies: its lease runs out, nothing recorded.
        time.sleep(0.06)  # the retry is due
        claim = deps.copies.claim(job_id, generation, now=deps.clock(), lease=0.01)
        assert claim.verdict == "ok" and claim.copy is not None and claim.copy.attempts == 2
        time.sleep(0.02)
        outcome = rehost.copy_result(deps, job_id, generation)
        copy = deps.store.lifecycle.get(job_id).results[0].stored
        assert outcome.state == "failed" and copy is not None and copy.status == "failed"
        assert copy.attempts == 3
        assert "stopped before they were done (gave up after 3 attempts)" in (copy.error or "")
        assert not list(tmp_path.rglob("*.png"))  # never tried once the schedule was spent
    finally:
        deps.http.close()
        deps.store.redis.close()


def test_the_worker_command_says_s3_needs_boto3_before_it_starts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without the storage extra, ``pollen worker`` stops with one line (exit 1) instead of a
    worker process dying at start with a traceback."""
    import importlib.util

    import typer

    from pollen.cli import servers
    from pollen.settings import Settings

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "boto3" else real(name, *a)
    )
    settings = Settings(storage=StorageSettings(url="s3://bucket/prefix"))
    with pytest.raises(typer.Exit) as stopped:
        servers.storage_usable(settings)
    assert stopped.value.exit_code == 1
    assert capsys.readouterr().err.strip() == (
        "error: POLLEN_STORAGE__URL=s3://bucket/prefix needs boto3: "
        "pip install 'pollen-jobs[storage]'"
    )
    # no boto3 needed
    servers.storage_usable(Settings(storage=StorageSettings(url="file:///tmp/x")))
