"""Webhooks are signed by default: a worker without a signing secret refuses to start unless
unsigned delivery is allowed explicitly, which it then warns about at every start."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pollen.callbacks import webhooks
from pollen.local.servers import RedisServer, Worker
from pollen.settings import CallbackSettings
from pollen.worker import signing
from tests.test_cli import assert_user_error, pollen

SECRETS = "POLLEN_CALLBACKS__SECRETS"
ALLOW = "POLLEN_CALLBACKS__ALLOW_UNSIGNED"


# --- the check --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("secrets", "allow", "refused", "warned"),
    [
        ([], False, True, False),  # nothing set: refused
        ([], True, False, True),  # unsigned on purpose: starts, warned
        (["whsec_aGVsbG8="], False, False, False),  # signed
        (["whsec_aGVsbG8="], True, False, False),  # signed anyway: nothing to warn about
    ],
)
def test_a_worker_starts_only_signed_or_unsigned_on_purpose(
    caplog: pytest.LogCaptureFixture, secrets: list[str], allow: bool, refused: bool, warned: bool
) -> None:
    callbacks = CallbackSettings.model_validate({"secrets": secrets, "allow_unsigned": allow})
    with caplog.at_level(logging.WARNING, logger=signing.__name__):
        refusal = signing.check(callbacks)
    assert (refusal is not None) == refused
    if refusal is not None:
        assert SECRETS in refusal and "pollen secret" in refusal and ALLOW in refusal
        assert "\n" not in refusal
    assert (signing.WARNING in caplog.messages) == warned


def test_allow_unsigned_defaults_to_false() -> None:
    assert CallbackSettings().allow_unsigned is False


# --- pollen secret ----------------------------------------------------------------------------


def test_pollen_secret_prints_a_new_signing_secret() -> None:
    first, second = (pollen({}, "secret") for _ in range(2))
    for result in (first, second):
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        assert result.stdout.startswith("whsec_") and result.stdout.count("\n") == 1
    assert first.stdout != second.stdout
    secret = first.stdout.strip()
    signed = webhooks.headers([secret], "msg_1", 1700000000, b"{}")["webhook-signature"]
    assert signed == webhooks.sign(secret, "msg_1", 1700000000, b"{}")


def test_pollen_secret_takes_no_argument() -> None:
    assert_user_error(pollen({}, "secret", "extra"), "unexpected extra argument", code=2)


# --- real workers -----------------------------------------------------------------------------


@pytest.fixture
def bare_env(worker_env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, str]]:
    """The session's worker environment on a Redis of its own (a worker here never takes the
    session's jobs), without a signing secret nor a metrics port (none to collide on)."""
    with RedisServer() as server:
        env = {k: v for k, v in worker_env.items() if k not in (SECRETS, "POLLEN_METRICS_PORT")}
        yield env | {
            "POLLEN_REDIS_URL": server.url(1),
            "POLLEN_BROKER_URL": server.url(0),
            "POLLEN_HEARTBEAT_FILE": str(tmp_path / "worker.heartbeat"),
        }


def unset(env: dict[str, str]) -> dict[str, str]:
    """``env`` added to this process's environment, with no signing secret in either."""
    return {k: v for k, v in {**os.environ, **env}.items() if k not in (SECRETS, ALLOW)}


@pytest.mark.integration
@pytest.mark.parametrize(
    "extra", [{}, {SECRETS: "[]"}, {ALLOW: "false"}], ids=["unset", "empty", "allow-false"]
)
def test_pollen_worker_without_a_secret_is_refused_in_one_line(
    bare_env: dict[str, str], extra: dict[str, str]
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pollen.cli", "worker", "-c", "1"],
        env=unset(bare_env) | extra,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    line = assert_user_error(result, SECRETS)
    assert line.startswith("error: ") and "pollen secret" in line and ALLOW in line


@pytest.mark.integration
def test_the_celery_worker_command_without_a_secret_is_refused_too(
    bare_env: dict[str, str], tmp_path: Path
) -> None:
    celery = str(Path(sys.executable).parent / "celery")
    result = subprocess.run(
        [celery, "-A", "pollen.worker", "worker", "-c", "1"],
        env=unset(bare_env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    assert [line for line in result.stderr.splitlines() if SECRETS in line] == [
        f"error: {signing.REFUSAL}"
    ]


def started_log(env: dict[str, str], log: Path) -> str:
    """Start ``pollen worker`` with ``env``, wait until it answers a ping, stop it: its log."""
    with Worker(env, name="signing", concurrency=1, log_file=str(log)) as proc:
        try:
            proc.wait_ready(env["POLLEN_BROKER_URL"])
        except RuntimeError:
            pytest.fail(f"worker did not start:\n{log.read_text()[-3000:]}")
    return log.read_text()


@pytest.mark.integration
def test_unsigned_on_purpose_starts_and_warns(bare_env: dict[str, str], tmp_path: Path) -> None:
    text = started_log(unset(bare_env) | {ALLOW: "true"}, tmp_path / "worker.log")
    warnings = [json.loads(line) for line in text.splitlines() if signing.WARNING in line]
    assert [w["level"] for w in warnings] == ["warning"]


@pytest.mark.integration
def test_a_worker_with_a_secret_starts_without_the_warning(
    bare_env: dict[str, str], tmp_path: Path
) -> None:
    env = unset(bare_env) | {SECRETS: json.dumps([webhooks.new_secret()])}
    text = started_log(env, tmp_path / "worker.log")
    assert ALLOW not in text and "unsigned" not in text
