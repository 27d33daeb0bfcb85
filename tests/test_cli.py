"""The ``pollen`` command line, run as a subprocess against the session's Redis and worker:
each command once as meant and once with an ordinary mistake (one stderr line, no traceback)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from pollen.contract import producer_app
from pollen.local.servers import CallbackReceiver, Worker, free_port
from pollen.settings import Settings
from pollen.simulator import SimulatorServer
from tests.conftest import eventually
from tests.helpers import queue_for_slots, sim_faults, video_request
from tests.test_wait import unsent_job

pytestmark = pytest.mark.integration

IMAGE = {
    "provider": "runware",
    "request": {
        "taskType": "imageInference",
        "model": "runware:101@1",
        "positivePrompt": "a watercolor hummingbird",
        "width": 512,
        "height": 512,
    },
}


def pollen(
    env: dict[str, str], *args: str, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pollen.cli", *args],
        env={**os.environ, "COLUMNS": "100", **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_user_error(result: subprocess.CompletedProcess[str], says: str, code: int = 1) -> str:
    """Exit ``code``, exactly one line on stderr containing ``says``, and no traceback."""
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert says in lines[0]
    assert result.returncode == code, result.stderr
    return lines[0]


def attempted(client: Any, job_id: str) -> bool:
    """Whether the job's first delivery made an attempt (its record appears only after the
    job's end, which is when ``wait`` returns)."""
    deliveries = client.callbacks(job_id)
    return bool(deliveries and deliveries[0]["attempts"])


@pytest.fixture
def down_env(worker_env: dict[str, str]) -> dict[str, str]:
    """The worker's settings with Redis at a free port (nothing listens) behind a password."""
    return {**worker_env, "POLLEN_REDIS_URL": f"redis://:hunter2@127.0.0.1:{free_port()}/1"}


# --- submit -------------------------------------------------------------------------------


def test_submit_inline_json_and_from_a_file(
    worker_env: dict[str, str], worker: Worker, clean: None, tmp_path: Path
) -> None:
    inline = pollen(worker_env, "submit", json.dumps(IMAGE))
    assert inline.returncode == 0, inline.stderr
    assert re.fullmatch(r"[0-9a-f]{32}\n", inline.stdout)
    path = tmp_path / "job.json"
    path.write_text(json.dumps(IMAGE))
    from_file = pollen(worker_env, "submit", f"@{path}")
    assert from_file.returncode == 0, from_file.stderr


def test_submit_a_missing_file_is_one_line(worker_env: dict[str, str], tmp_path: Path) -> None:
    result = pollen(worker_env, "submit", f"@{tmp_path}/missing.json")
    assert_user_error(result, "cannot read")
    assert "No such file" in result.stderr


def test_submit_a_file_name_without_at_hints_at_it(
    worker_env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "job.json"
    path.write_text(json.dumps(IMAGE))
    result = pollen(worker_env, "submit", str(path))
    assert_user_error(result, f"write @{path}")


def test_submit_bad_json_is_one_line_without_a_file_hint(worker_env: dict[str, str]) -> None:
    result = pollen(worker_env, "submit", '{"provider": ')
    line = assert_user_error(result, "not valid JSON")
    assert "@" not in line


def test_submit_an_invalid_job_is_a_usage_error(worker_env: dict[str, str], clean: None) -> None:
    result = pollen(worker_env, "submit", json.dumps({"provider": "nope", "request": {}}))
    assert_user_error(result, "provider", code=2)


def test_submit_wait_prints_plain_progress_lines_then_the_job(
    worker_env: dict[str, str], worker: Worker, clean: None
) -> None:
    job = {"provider": "runware", "request": video_request([0.5, 1.5])}
    result = pollen(worker_env, "submit", json.dumps(job), "--wait", "30")
    assert result.returncode == 0, result.stderr
    job_id, *rest = result.stdout.splitlines()
    assert json.loads("\n".join(rest))["status"] == "succeeded"
    progress = result.stderr.splitlines()  # stderr is not a terminal: one plain line per change
    assert "\r" not in result.stderr
    assert progress[-1] == f"{job_id} succeeded results 2/2 progress 100%"
    assert len(progress) == len(set(progress)) >= 2
    assert any(" results 1/2" in line for line in progress)


def test_submit_json_prints_one_document_with_the_job_id(
    worker_env: dict[str, str], worker: Worker, clean: None
) -> None:
    result = pollen(worker_env, "submit", json.dumps(IMAGE), "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert list(document) == ["job_id"] and re.fullmatch(r"[0-9a-f]{32}", document["job_id"])
    assert result.stderr == ""


def test_submit_wait_json_prints_only_the_finished_job(
    worker_env: dict[str, str], worker: Worker, clean: None
) -> None:
    job = {"provider": "runware", "request": video_request([0.5, 1.5])}
    result = pollen(worker_env, "submit", json.dumps(job), "--wait", "30", "--json")
    assert result.returncode == 0, result.stderr
    finished = json.loads(result.stdout)
    assert finished["status"] == "succeeded" and len(finished["results"]) == 2
    progress = result.stderr.splitlines()
    assert progress[-1] == f"{finished['id']} succeeded results 2/2 progress 100%"


def test_submit_wait_json_of_a_failed_job_is_still_one_document_and_exit_1(
    worker_env: dict[str, str], worker: Worker, clean: None
) -> None:
    job = {"provider": "runware", "request": {"taskType": "imageInference", "model": "m:1@1"}}
    result = pollen(worker_env, "submit", json.dumps(job), "--wait", "30", "--json")
    assert result.returncode == 1, result.stderr
    assert json.loads(result.stdout)["error"]["code"] == "missingParameter"


def test_submit_wait_json_of_a_job_still_running_prints_it_as_it_stands_and_exits_3(
    worker_env: dict[str, str], worker: Worker, clean: None
) -> None:
    job = {"provider": "runware", "request": video_request([20])}
    result = pollen(worker_env, "submit", json.dumps(job), "--wait", "1", "--json")
    assert result.returncode == 3, result.stderr
    running = json.loads(result.stdout)
    assert running["status"] in ("queued", "submitted", "processing") and running["id"]
    assert "still" in result.stderr.splitlines()[-1]


def test_submit_a_misspelt_field_is_a_usage_error_with_a_suggestion(
    worker_env: dict[str, str], clean: None
) -> None:
    request = {"taskType": "imageInference", "model": "runware:101@1", "positivPrompt": "a fox"}
    job = {"provider": "runware", "request": request}
    result = pollen(worker_env, "submit", json.dumps(job), "--json")
    line = assert_user_error(result, "request.positivPrompt: unknown field", code=2)
    assert line.endswith("did you mean 'positivePrompt'?")
    assert result.stdout == ""


def test_submit_wait_for_a_job_that_fails_exits_1(
    worker_env: dict[str, str], worker: Worker, clean: None
) -> None:
    """Like `pollen wait`: a script can tell a failed job from a finished one by the exit code."""
    job = {"provider": "runware", "request": {"taskType": "imageInference", "model": "m:1@1"}}
    result = pollen(worker_env, "submit", json.dumps(job), "--wait", "30")
    assert result.returncode == 1, result.stderr
    job_id, *rest = result.stdout.splitlines()
    finished = json.loads("\n".join(rest))
    assert finished["status"] == "failed"
    assert finished["error"]["code"] == "missingParameter"
    assert finished["created_at_iso"].endswith("Z")  # the same timestamps as `pollen result`
    assert result.stderr.splitlines()[-1] == f"{job_id} failed results 0/1"


# --- wait ---------------------------------------------------------------------------------


def test_wait_follows_a_job_to_its_end(
    worker_env: dict[str, str], worker: Worker, clean: None
) -> None:
    job_id = pollen(worker_env, "submit", json.dumps(IMAGE)).stdout.strip()
    result = pollen(worker_env, "wait", job_id, "--timeout", "30")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{job_id} succeeded ")
    assert result.stderr.splitlines()[-1].startswith(f"{job_id} succeeded results 1/1")


def test_wait_for_an_unknown_job_is_one_line(worker_env: dict[str, str], clean: None) -> None:
    assert_user_error(pollen(worker_env, "wait", "nope", "--timeout", "5"), "job not found: nope")


def test_wait_times_out_with_exit_3(worker_env: dict[str, str], deps: Any) -> None:
    job_id = unsent_job(deps)
    started = time.monotonic()
    result = pollen(worker_env, "wait", job_id, "--timeout", "1.5")
    assert time.monotonic() - started < 1.5 + 5  # + interpreter start-up
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"{job_id} queued results 0/1",
        f"error: job {job_id} is still queued after 1.5s",
    ]
    assert result.returncode == 3


# --- status, result, details --------------------------------------------------------------


def test_status_result_and_details(worker_env: dict[str, str], worker: Worker, clean: None) -> None:
    job_id = pollen(worker_env, "submit", json.dumps(IMAGE), "--wait", "30").stdout.split()[0]
    status = pollen(worker_env, "status", job_id)
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith(f"{job_id} succeeded polls=")
    assert "last error" not in status.stdout
    stored = json.loads(pollen(worker_env, "result", job_id).stdout)
    for name in ("created_at", "submitted_at", "finished_at", "updated_at"):
        iso = stored[f"{name}_iso"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", iso)
        assert iso == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stored[name]))
    assert stored["results"][0]["seen_at_iso"].endswith("Z")
    details = pollen(worker_env, "details", job_id)
    assert json.loads(details.stdout)["taskType"] == "getTaskDetails"


def test_status_shows_tenant_priority_account_and_why_a_job_waits(
    worker_env: dict[str, str], client: Any, settings: Settings
) -> None:
    admitted = queue_for_slots(settings, client.store, [("first", "acme"), ("second", "beta")], 1)
    assert list(admitted.admitted) == ["first"]
    running = pollen(worker_env, "status", "first")
    assert running.returncode == 0, running.stderr
    assert running.stdout.split()[-3:] == ["tenant=acme", "priority=0", "account=default"]
    waiting = pollen(worker_env, "status", "second").stdout
    assert (
        " tenant=beta priority=0 queue reason: waiting for capacity on runware (as it joined "
        "the queue: 1 of 1 " in waiting
    )
    assert "account=" not in waiting and len(waiting.splitlines()) == 1
    listed = pollen(worker_env, "jobs", "--tenant", "beta")
    assert [row.split()[0] for row in listed.stdout.splitlines()[1:]] == ["second"]
    assert listed.stdout.splitlines()[1].split()[-1] == "beta"
    assert_user_error(pollen(worker_env, "jobs", "--tenant", "a b"), "tenant 'a b'", 2)


@pytest.mark.parametrize("command", ["status", "result", "details", "cancel"])
def test_an_unknown_job_is_one_line(worker_env: dict[str, str], clean: None, command: str) -> None:
    assert_user_error(pollen(worker_env, command, "nope"), "job not found: nope")


def test_status_shows_the_last_error_while_retrying(
    worker_env: dict[str, str], worker: Worker, simulator: SimulatorServer, client: Any
) -> None:
    sim_faults(simulator.url, ["503"] * 30, retry_after=1)
    job_id = client.submit_payload(IMAGE)
    eventually(lambda: client.store.lifecycle.raw(job_id).get("last_error"), what="a failed submit")
    result = pollen(worker_env, "status", job_id)
    assert result.returncode == 0, result.stderr
    assert not client.get(job_id).terminal
    # "failed=": outputs the provider failed; the last error is the request's, retried
    assert re.fullmatch(
        rf"{job_id} \w+ polls=0 results=0/1 failed=0 .* last error: \S+.*\n", result.stdout
    )


# --- callbacks ----------------------------------------------------------------------------


def test_callbacks_list_prints_each_attempt_and_replay(
    worker_env: dict[str, str], worker: Worker, client: Any, receiver: CallbackReceiver
) -> None:
    job_id = client.submit_payload({**IMAGE, "callback_url": f"{receiver.url}/hook"})
    client.wait(job_id, 30)
    eventually(lambda: attempted(client, job_id), what="a delivery attempt")
    listed = pollen(worker_env, "callbacks", "list", job_id)
    assert listed.returncode == 0, listed.stderr
    delivery, attempt = listed.stdout.splitlines()[:2]
    assert "completed" in delivery
    assert re.fullmatch(
        r"    \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ  delivered +HTTP 200  \d+ ms", attempt
    ), attempt
    replay = pollen(worker_env, "callbacks", "replay", job_id, "--all")
    assert replay.stdout.startswith("replayed 1 deliveries"), replay.stderr


def test_callbacks_list_shows_a_refused_attempt_once_and_replay_names_an_unknown_delivery(
    worker_env: dict[str, str], worker: Worker, client: Any
) -> None:
    with CallbackReceiver(status=500) as refusing:
        job_id = client.submit_payload({**IMAGE, "callback_url": f"{refusing.url}/hook"})
        client.wait(job_id, 30)
        eventually(lambda: attempted(client, job_id), what="a delivery attempt")
    listed = pollen(worker_env, "callbacks", "list", job_id)
    attempt = listed.stdout.splitlines()[1]
    # the error said only "HTTP 500", which the line already shows
    assert re.fullmatch(r"    \S+Z  retry +HTTP 500  \d+ ms", attempt), attempt
    replay = pollen(worker_env, "callbacks", "replay", job_id, "--delivery", "msg_nope")
    assert_user_error(replay, f"job {job_id} has no delivery msg_nope")


def test_callbacks_list_says_why_the_worker_refused_what_the_producer_allowed(
    worker_env: dict[str, str], worker: Worker, settings: Settings, clean: None
) -> None:
    """The producer allow-lists ::1, the workers only 127.0.0.0/8: the job is accepted and its
    delivery refused, and the listed attempt names the refusal and the setting to change."""
    from pollen import Pollen

    callbacks = settings.callbacks.model_copy(update={"allow_cidrs": ["127.0.0.0/8", "::1/128"]})
    hook = f"http://[::1]:{free_port()}/hook"
    with Pollen(settings.model_copy(update={"callbacks": callbacks})) as producer:
        job_id = producer.submit_payload({**IMAGE, "callback_url": hook})
        producer.wait(job_id, 30)
        eventually(lambda: attempted(producer, job_id), what="a delivery attempt")
    listed = pollen(worker_env, "callbacks", "list", job_id)
    assert listed.returncode == 0, listed.stderr
    delivery, attempt = listed.stdout.splitlines()[:2]
    assert delivery.endswith(hook)
    assert re.fullmatch(
        r"    \S+Z  failed +HTTP -  \d+ ms  callback address ::1 refused: loopback; to allow "
        r"it, add its network to POLLEN_CALLBACKS__ALLOW_CIDRS",
        attempt,
    ), attempt


@pytest.mark.parametrize("command", ["list", "replay"])
def test_callbacks_of_an_unknown_job_is_one_line(
    worker_env: dict[str, str], clean: None, command: str
) -> None:
    assert_user_error(pollen(worker_env, "callbacks", command, "nope"), "job not found: nope")


# --- Redis down ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["status", "abc"],
        ["result", "abc"],
        ["details", "abc"],
        ["wait", "abc", "--timeout", "5"],
        ["callbacks", "list", "abc"],
        ["callbacks", "replay", "abc"],
        ["stats"],
        ["submit", json.dumps(IMAGE)],
    ],
    ids=lambda args: "-".join(a for a in args if a.isalpha()),
)
def test_redis_down_is_one_line_within_seconds(down_env: dict[str, str], args: list[str]) -> None:
    started = time.monotonic()
    result = pollen(down_env, *args, timeout=30)
    assert time.monotonic() - started < 6  # not the client's ~20 s of reconnect retries
    port = down_env["POLLEN_REDIS_URL"].rsplit(":", 1)[1].split("/")[0]
    line = assert_user_error(result, f"Redis at redis://:****@127.0.0.1:{port}/1 is unreachable")
    assert "hunter2" not in line


# --- config -------------------------------------------------------------------------------


def test_config_shows_effective_values_and_masks_every_secret(worker_env: dict[str, str]) -> None:
    env = {
        **worker_env,
        "POLLEN_REDIS_URL": "redis://:hunter2@127.0.0.1:6399/1",
        "POLLEN_RUNWARE__API_KEY": "rw-key-hunter2",
        "POLLEN_CALLBACKS__SECRETS": '["whsec_hunter2"]',
    }
    del env["POLLEN_BROKER_URL"]
    env.pop("POLLEN_RESULT_BACKEND", None)
    result = pollen(env, "config")
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout
    assert "PydanticUndefined" not in result.stdout
    values = dict(
        line.split("=", 1) for line in result.stdout.splitlines() if line.startswith("POLLEN_")
    )
    masked = "redis://:****@127.0.0.1:6399/1"
    assert values["POLLEN_REDIS_URL"] == masked
    assert values["POLLEN_BROKER_URL"] == f"{masked} (default: POLLEN_REDIS_URL)"
    assert values["POLLEN_RESULT_BACKEND"] == f"{masked} (default: POLLEN_BROKER_URL)"
    assert values["POLLEN_RUNWARE__API_KEY"] == "********"
    assert values["POLLEN_CALLBACKS__SECRETS"] == '["********"]'
    assert values["POLLEN_CALLBACKS__SCHEDULE"] == "[0.0, 0.3, 0.6, 1.0]"
    assert values["POLLEN_COMET__RUNWAY_VERSION"] == "(not set) (default)"
    assert values["POLLEN_RATE_LIMITS"] == "{} (default)"


def test_config_shows_the_result_backend_of_a_rabbitmq_broker(worker_env: dict[str, str]) -> None:
    env = {**worker_env, "POLLEN_BROKER_URL": "amqp://alice:hunter2@rabbit:5672//"}
    env.pop("POLLEN_RESULT_BACKEND", None)
    result = pollen(env, "config")
    assert result.returncode == 0, result.stderr
    store = worker_env["POLLEN_REDIS_URL"]
    assert f"POLLEN_RESULT_BACKEND={store} (default: POLLEN_REDIS_URL)\n" in result.stdout
    assert "POLLEN_QUORUM_QUEUES=false (default)\n" in result.stdout
    assert "hunter2" not in result.stdout


def test_quorum_queues_on_a_redis_broker_are_refused_in_one_line(
    worker_env: dict[str, str],
) -> None:
    result = pollen({**worker_env, "POLLEN_QUORUM_QUEUES": "true"}, "config")
    assert_user_error(result, "POLLEN_QUORUM_QUEUES: quorum queues are a RabbitMQ feature")


def test_config_masks_a_user_and_password_url(worker_env: dict[str, str]) -> None:
    env = {**worker_env, "POLLEN_BROKER_URL": "redis://alice:hunter2@broker:6379/0"}
    result = pollen(env, "config")
    assert "POLLEN_BROKER_URL=redis://alice:****@broker:6379/0\n" in result.stdout
    assert "hunter2" not in result.stdout


def test_config_with_an_invalid_setting_is_one_line(worker_env: dict[str, str]) -> None:
    result = pollen({**worker_env, "POLLEN_JOB_TTL": "abc"}, "config")
    line = assert_user_error(result, "POLLEN_JOB_TTL")
    assert "HEARTBEAT" not in line  # a default built from the bad value repeats no error


@pytest.mark.parametrize("command", ["status abc", "stats", "config"])
def test_a_redis_url_that_is_not_one_is_a_settings_error(
    worker_env: dict[str, str], command: str
) -> None:
    result = pollen({**worker_env, "POLLEN_REDIS_URL": "localhost:6379"}, *command.split())
    assert_user_error(result, "POLLEN_REDIS_URL: must start with redis://")


# --- worker, help -------------------------------------------------------------------------


def test_worker_pool_option_reaches_celery(
    worker_env: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    name = f"cli-solo-{free_port()}@localhost"
    log = (tmp_path / "worker.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pollen.cli", "worker", "-P", "solo", "-c", "1", "-n", name],
        env={**os.environ, **worker_env, "POLLEN_METRICS_PORT": str(free_port())},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    app = producer_app(settings)
    try:

        def pool() -> Any:
            stats = app.control.inspect(destination=[name], timeout=1).stats() or {}
            return stats.get(name, {}).get("pool", {}).get("implementation")

        assert "solo" in eventually(pool, timeout=40, interval=0.5, what="the worker's stats")
    finally:
        app.close()
        proc.terminate()
        proc.wait(30)
        log.close()


def test_worker_with_an_unknown_pool_is_a_usage_error(worker_env: dict[str, str]) -> None:
    result = pollen(worker_env, "worker", "-P", "bogus")
    assert_user_error(result, "'bogus' is not one of threads, prefork, solo", code=2)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["submit"], "Missing argument 'PAYLOAD'. (see 'pollen submit --help')"),
        (["frobnicate"], "No such command 'frobnicate'. (see 'pollen --help')"),
        (["stats", "--jsn"], "No such option: --jsn"),
        (["wait", "abc", "--timeout", "soon"], "Invalid value for '--timeout'"),
        (["callbacks", "lst", "abc"], "Did you mean 'list'?"),
        (["demo", "--jobs", "-1"], "Invalid value for '--jobs'"),
        (["simulator", "--max-running", "0"], "Invalid value for '--max-running'"),
        (["simulator", "--key", "acct=0"], "--key 'acct=0': give KEY or KEY=CAP"),
        (["simulator", "--key", "=3"], "--key '=3': give KEY or KEY=CAP"),
        (["simulator", "--key", "acct=two"], "--key 'acct=two': give KEY or KEY=CAP"),
    ],
)
def test_a_usage_mistake_is_one_line_and_exit_2(
    worker_env: dict[str, str], args: list[str], says: str
) -> None:
    assert_user_error(pollen(worker_env, *args), says, code=2)


def test_no_command_prints_the_help(worker_env: dict[str, str]) -> None:
    result = pollen(worker_env)
    assert "Usage: pollen [OPTIONS] COMMAND" in result.stdout
    assert result.stderr == ""


COMMANDS = [
    [], ["worker"], ["submit"], ["wait"], ["status"], ["result"], ["details"], ["callbacks"],
    ["callbacks", "list"], ["callbacks", "replay"], ["simulator"], ["demo"], ["health"],
    ["stats"], ["config"], ["schema"], ["cancel"], ["jobs"], ["ingress"], ["dashboard"],
    ["secret"], ["rejected"],
]  # fmt: skip


def test_every_command_has_its_help_checked() -> None:
    from typer.core import TyperGroup
    from typer.main import get_command

    from pollen.cli import app

    group = get_command(app)
    assert isinstance(group, TyperGroup)
    names = set()
    for name, cmd in group.commands.items():
        names.add(name)
        if isinstance(cmd, TyperGroup):
            names |= {f"{name} {sub}" for sub in cmd.commands}
    assert names == {" ".join(args) for args in COMMANDS if args}


@pytest.mark.parametrize("args", COMMANDS, ids=lambda args: "-".join(args) or "pollen")
def test_help_reads_naturally(worker_env: dict[str, str], args: list[str]) -> None:
    result = pollen(worker_env, *args, "--help")
    assert result.returncode == 0
    # flags take no value; a metavar (JOB, SECONDS, PORT) says what the others take
    for type_name in ("<bool>", "<str>", "<int>", "<float>"):
        assert type_name not in result.stdout
    # a flag is --local, not --local/--no-local (a flag named --no-auth is fine: no pair)
    for negative in re.findall(r"--no-([a-z-]+)", result.stdout):
        assert f"--{negative}" not in result.stdout.replace(f"--no-{negative}", ""), negative
    usage = next(line for line in result.stdout.splitlines() if "Usage:" in line)
    assert "{" not in usage
    expected = {"submit": "PAYLOAD", "status": "JOB", "result": "JOB"}
    if args and args[0] in expected:
        assert usage.split()[-1] == expected[args[0]]
    if args == ["worker"]:
        assert "-P" in result.stdout


# --- demo ---------------------------------------------------------------------------------


def test_demo_at_80_columns_prints_real_costs_and_a_rule_of_its_own() -> None:
    """The demo piped at 80 columns (it starts its own Redis, simulator, worker and the
    dashboard); stdin is not a terminal, so it ends by itself after the report."""
    result = pollen({"COLUMNS": "80"}, "demo", "--jobs", "1", stdin="", timeout=150)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    lines = result.stdout.splitlines()
    assert "cost None" not in result.stdout  # the Runway dialects report no cost
    stored = next(i for i, line in enumerate(lines) if "stored results" in line)
    assert lines[stored].startswith("─")  # not glued to the table's last row
    assert lines[stored - 1].strip() == ""
    title = next(i for i, line in enumerate(lines) if "pollen demo —" in line)
    assert all(len(line) <= 80 for line in lines[title:stored])  # the table does not wrap
    jobs = [line for line in lines[stored + 1 :] if re.match(r"[0-9a-f]{32} ", line)]
    assert len(jobs) == 5
    assert re.search(r"3 videos, 2-6 s: succeeded, cost \d", "\n".join(jobs))
    assert all(re.search(r": (succeeded|failed)(, cost [\d.e-]+)?$", line) for line in jobs), jobs
    # the report waits for pollen's copies of the results (re-hosting) to be stored
    assert "pollen's copy: stored" in result.stdout
    assert "pollen's copy: pending" not in result.stdout
    dashboard = re.search(
        r"dashboard (http://127\.0\.0\.1:\d+)/ +\(user demo, password \S+\)", result.stdout
    )
    assert dashboard, result.stdout[:2000]
    assert f"not a terminal: the dashboard {dashboard.group(1)} stops now" in result.stdout


def test_the_simulator_command_caps_each_key(worker_env: dict[str, str]) -> None:
    """``--max-running`` caps the default key, ``--key NAME=CAP`` adds a key with its own cap:
    the simulator refuses Runware creates past each one."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pollen.cli", "simulator", "--port", str(port), "--max-running", "1",
         "--key", "spare=2", "--key", "plain", "--duration-min", "30", "--duration-max", "30"],
        env={**os.environ, **worker_env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        eventually(lambda: _answers(url), timeout=20, what="the simulator to answer")

        def create(key: str) -> int:
            task = {"taskType": "imageInference", "taskUUID": str(uuid.uuid4()),
                    "deliveryMethod": "async", "model": "runware:101@1",
                    "positivePrompt": "x", "width": 512, "height": 512}  # fmt: skip
            answer = httpx.post(
                f"{url}/v1", json=[task], headers={"Authorization": f"Bearer {key}"}
            )
            return answer.status_code

        assert [create("sim-key") for _ in range(2)] == [200, 429]
        assert [create("spare") for _ in range(3)] == [200, 200, 429]
        # a key without a cap of its own takes --max-running's, counted on its own
        assert [create("plain") for _ in range(2)] == [200, 429]
        assert create("unknown") == 401
    finally:
        proc.terminate()
        proc.wait(20)


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        (
            "POLLEN_RUNWARE__ACCOUNTS",
            '[{"name": "a",}]',
            "POLLEN_RUNWARE__ACCOUNTS: not valid JSON",
        ),
        ("POLLEN_TENANTS", "{acme: 1}", "POLLEN_TENANTS: not valid JSON"),
        ("POLLEN_RATE_LIMITS", "fast", "POLLEN_RATE_LIMITS: not valid JSON"),
        ("POLLEN_TENANTS", '{"a b": {}}', "POLLEN_TENANTS: tenant name 'a b'"),
        ("POLLEN_RUNWARE__MAX_IN_FLIGHT", "0", "POLLEN_RUNWARE__MAX_IN_FLIGHT: Input should be"),
        (
            "POLLEN_TASK_EVENTS",
            "maybe",
            "POLLEN_TASK_EVENTS: 'maybe' is not a yes/no value (use true or false",
        ),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_variable(
    worker_env: dict[str, str], variable: str, value: str, says: str
) -> None:
    assert_user_error(pollen({**worker_env, variable: value}, "config"), says)
    worker = subprocess.run(
        [str(Path(sys.executable).parent / "celery"), "-A", "pollen.worker", "worker"],
        env={**os.environ, **worker_env, variable: value}, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert_user_error(worker, says)


def test_a_worker_that_cannot_start_says_why_in_one_line(worker_env: dict[str, str]) -> None:
    assert_user_error(
        pollen({**worker_env, "POLLEN_BROKER_URL": "foo://x"}, "worker"),
        "POLLEN_BROKER_URL: Celery has no broker transport 'foo'",
    )
    import socket

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_user_error(
            pollen({**worker_env, "POLLEN_METRICS_PORT": str(port)}, "worker"),
            f"cannot listen on 0.0.0.0:{port} (POLLEN_METRICS_PORT)",
        )


def test_a_client_made_from_a_bad_environment_names_the_variable_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``Pollen()`` reads the environment as the CLI does: one error naming the variable, and
    nothing about defaults computed from other settings (the heartbeat file's)."""
    from pollen import Pollen
    from pollen.errors import InvalidSettings
    from pollen.settings import get_settings

    monkeypatch.setenv("POLLEN_TASK_EVENTS", "maybe")
    get_settings.cache_clear()
    try:
        with pytest.raises(InvalidSettings) as raised:
            Pollen()
    finally:
        get_settings.cache_clear()
    assert str(raised.value) == (
        "invalid settings: POLLEN_TASK_EVENTS: 'maybe' is not a yes/no value "
        "(use true or false; 1/0, yes/no, on/off)"
    )
