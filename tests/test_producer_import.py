"""The producer side stands alone: ``from pollen import Pollen`` loads no worker, reads no
environment, and ``celery -A pollen.worker worker`` (Celery's own command, no flags) runs jobs.
"""

from __future__ import annotations

import email
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
import redis

import pollen
from pollen import JobStatus, Pollen
from pollen.local.servers import CallbackReceiver, RedisServer, Worker
from pollen.settings import Settings
from tests.conftest import eventually
from tests.helpers import video_request

ROOT = Path(__file__).resolve().parent.parent
#: what a producer must never load: the worker, its metrics and the simulator's server stack
HEAVY = (
    "pollen.worker",
    "pollen.simulator",
    "pollen.dashboard",
    "jinja2",
    "prometheus_client",
    "starlette",
    "uvicorn",
    "flower",
    "psutil",
    "standardwebhooks",
)
#: broker and store databases of this file's own worker, apart from the session's (0 and 1)
OWN_BROKER_DB, OWN_STORE_DB = 4, 5

# A producer installed as `pip install pollen-jobs`, without the tracing extra: redis-py 8
# imports OpenTelemetry's SDK (and so psutil) for metrics of its own whenever it is installed.
IMPORT_PROBE = """
import json, sys, time
sys.modules["opentelemetry"] = None  # not installed
started = time.perf_counter()
from pollen import Pollen
elapsed = time.perf_counter() - started
from pollen.settings import Settings
client = Pollen(Settings(redis_url="redis://127.0.0.1:9/0"))
app = client.celery  # the producer's Celery app, built from pollen.contract
heavy = sorted(m for m in sys.modules if m.partition(".")[0] in {heavy}
               or m.startswith({prefixes}))
print(json.dumps({{"seconds": elapsed, "modules": len(sys.modules), "heavy": heavy,
                  "routes": app.conf.task_routes}}))
"""


def python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("POLLEN_")}
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )


def probe(env: dict[str, str] | None = None) -> dict[str, object]:
    top = {m for m in HEAVY if "." not in m}
    prefixes = tuple(m for m in HEAVY if "." in m)
    done = python(IMPORT_PROBE.format(heavy=top, prefixes=prefixes), env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert isinstance(result, dict)
    return result


def test_importing_the_producer_loads_no_worker_metrics_or_simulator() -> None:
    result = probe()
    assert result["heavy"] == []
    assert result["routes"] == {
        "pollen.submit": {"queue": "pollen.submit"},
        "pollen.poll": {"queue": "pollen.poll"},
        "pollen.deliver_callback": {"queue": "pollen.callbacks"},
        "pollen.cancel": {"queue": "pollen.callbacks"},
        "pollen.copy_result": {"queue": "pollen.callbacks"},
    }
    print(f"from pollen import Pollen: {result['seconds']:.3f}s, {result['modules']} modules")


def test_a_bad_pollen_variable_does_not_stop_a_producer_that_passes_its_settings() -> None:
    bad = {"POLLEN_POLL__FACTOR": "notanumber"}
    refused = python("from pollen.settings import Settings; Settings()", bad)
    assert refused.returncode != 0 and "poll.factor" in refused.stderr  # the variable is bad
    code = (
        "from pollen import Pollen\n"
        "from pollen.settings import Settings\n"
        "settings = Settings(redis_url='redis://127.0.0.1:9/0', poll={'factor': 2})\n"
        "client = Pollen(settings)\n"
        "assert client.celery.conf.task_default_queue == 'pollen.submit'\n"
        "print(client.settings.poll.factor)\n"
    )
    done = python(code, bad)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2.0"


@pytest.mark.parametrize(
    ("command", "missing", "extra"),
    [("worker", "standardwebhooks", "worker"), ("simulator", "uvicorn", "simulator")],
)
def test_a_command_whose_extra_is_missing_says_what_to_install(
    command: str, missing: str, extra: str
) -> None:
    code = (
        f"import sys; sys.modules[{missing!r}] = None  # as if not installed\n"
        f"sys.argv = ['pollen', {command!r}]\n"
        "from pollen.cli import main; main()\n"
    )
    done = python(code)
    assert done.returncode == 1
    assert (
        done.stderr.strip()
        == f"error: this command needs {missing}: pip install 'pollen-jobs[{extra}]'"
    )


def test_the_wheel_ships_the_schema(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "--wheel-dir", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("pollen_jobs-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "pollen/job-request.schema.json" in names
    assert "pollen/contract.py" in names
    assert not any(name.startswith(("schema/", "tests/")) for name in names)
    (fields,) = [name for name in names if name.endswith(".dist-info/METADATA")]
    headers = email.message_from_bytes(zipfile.ZipFile(wheel).read(fields))
    assert headers["Name"] == "pollen-jobs"
    # extras that pull in other extras name the distribution itself, not the taken "pollen"
    own = [r for r in headers.get_all("Requires-Dist") or [] if r.startswith("pollen")]
    assert own and all(r.startswith("pollen-jobs[") for r in own)


def test_the_distribution_is_pollen_jobs_and_the_import_is_pollen() -> None:
    """``pollen`` on the package index is an unrelated project: pollen is published as
    ``pollen-jobs``, imported as ``pollen``, and installs the ``pollen`` command."""
    dist = metadata.distribution("pollen-jobs")
    assert dist.version == pollen.__version__
    assert "pollen-jobs" in metadata.packages_distributions()["pollen"]
    scripts = {e.name: e.value for e in dist.entry_points if e.group == "console_scripts"}
    assert scripts == {"pollen": "pollen.cli:main"}


# --- Celery's own worker command --------------------------------------------------------------


@pytest.fixture
def own_env(
    worker_env: dict[str, str], redis_server: RedisServer, tmp_path: Path
) -> dict[str, str]:
    """The session's worker environment on databases of its own, so the session's worker (if
    one runs) never takes these jobs, and without the session worker's metrics port."""
    env = {k: v for k, v in worker_env.items() if k != "POLLEN_METRICS_PORT"}
    return env | {
        "POLLEN_REDIS_URL": redis_server.url(OWN_STORE_DB),
        "POLLEN_BROKER_URL": redis_server.url(OWN_BROKER_DB),
        "POLLEN_HEARTBEAT_FILE": str(tmp_path / "worker.heartbeat"),
    }


@pytest.fixture
def own_client(own_env: dict[str, str], redis_server: RedisServer) -> Iterator[Pollen]:
    for db in (OWN_STORE_DB, OWN_BROKER_DB):
        flushed = redis.Redis.from_url(redis_server.url(db))
        flushed.flushdb()
        flushed.close()
    saved = dict(os.environ)
    try:
        os.environ.update(own_env)
        settings = Settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    with Pollen(settings) as client:
        yield client


class CeleryWorker(Worker):
    """``celery -A pollen.worker worker [flags]``: Celery's command, not ``pollen worker``."""

    def __init__(self, env: dict[str, str], tmp_path: Path, *flags: str) -> None:
        super().__init__(env, name="celery", log_file=str(tmp_path / "celery-worker.log"))
        self.cwd = tmp_path  # the app is found in the installed package, not the cwd
        self.flags = flags

    def start(self) -> None:
        celery = str(Path(sys.executable).parent / "celery")
        self._spawn([celery, "-A", "pollen.worker", "worker", *self.flags])


@pytest.mark.integration
def test_the_plain_celery_worker_command_consumes_every_pollen_queue(
    own_env: dict[str, str],
    own_client: Pollen,
    redis_server: RedisServer,
    receiver: CallbackReceiver,
    tmp_path: Path,
) -> None:
    """Submit (pollen.submit), polls (pollen.poll) and the completion callback
    (pollen.callbacks) all run on a worker started with no -Q."""
    with CeleryWorker(own_env, tmp_path) as proc:
        try:
            proc.wait_ready(redis_server.url(OWN_BROKER_DB), timeout=60)
            job_id = own_client.submit(
                "runware", video_request([0.3, 0.6]), callback_url=f"{receiver.url}/plain"
            )
            job = own_client.wait(job_id, timeout=30)
            assert job.status is JobStatus.SUCCEEDED, job
            assert job.polls >= 1  # pollen.poll ran
            posts = eventually(lambda: receiver.received("/plain"), what="the completion POST")
            assert posts[-1]["json"]["type"] == "job.completed"
        except BaseException:
            print((tmp_path / "celery-worker.log").read_text())
            raise


@pytest.mark.integration
def test_the_celery_worker_command_still_honours_q(
    own_env: dict[str, str], own_client: Pollen, redis_server: RedisServer, tmp_path: Path
) -> None:
    """-Q pollen.submit: the job is submitted, and its first poll waits on pollen.poll."""
    broker = redis.Redis.from_url(redis_server.url(OWN_BROKER_DB))
    with CeleryWorker(own_env, tmp_path, "-Q", "pollen.submit") as proc:
        try:
            proc.wait_ready(redis_server.url(OWN_BROKER_DB), timeout=60)
            job_id = own_client.submit("runware", video_request([0.2]))
            eventually(lambda: broker.llen("pollen.poll") >= 1, what="a poll left on its queue")
            assert own_client.get(job_id).status is JobStatus.SUBMITTED
            assert own_client.get(job_id).polls == 0
        except BaseException:
            print((tmp_path / "celery-worker.log").read_text())
            raise
        finally:
            broker.close()
