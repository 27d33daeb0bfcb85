"""The README's producer examples run as written; its settings and command tables are complete."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pollen.local.servers import Worker
from pollen.settings import environment_variables

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_examples() -> list[str]:
    """Python blocks that directly follow a ``<!-- tested ... -->`` marker."""
    pattern = re.compile(r"<!-- tested[^>]*-->\s*```python\n(.*?)```", re.DOTALL)
    return pattern.findall(README.read_text())


def test_readme_has_both_producer_examples() -> None:
    examples = readme_examples()
    assert len(examples) == 7
    assert "Pollen()" in examples[0]
    assert "submit_many(" in examples[1]
    assert ".cancel(" in examples[2]
    assert ".jobs(" in examples[3]
    assert "AsyncPollen()" in examples[4]
    assert "RunwareImageRequest(" in examples[5] and "CometRunwayRequest(" in examples[5]
    assert 'send_task(\n    "pollen.submit"' in examples[6]
    assert "import pollen" not in examples[6] and "from pollen" not in examples[6]


@pytest.mark.integration
@pytest.mark.parametrize(
    "index",
    [0, 1, 2, 3, 4, 5, 6],
    ids=["client", "submit_many", "cancel", "jobs", "asyncio", "typed", "send_task"],
)
def test_readme_example_runs(
    index: int, worker: Worker, worker_env: dict[str, str], clean: None
) -> None:
    code = readme_examples()[index]
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **worker_env},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    if index == 0:
        assert result.stdout.splitlines()[0] in {"queued", "submitted"}
        status, urls, *_ = result.stdout.splitlines()[1].split(" ", 2)
        assert status == "succeeded"
        # result URLs are the simulator's own /media files (http) since 58cfc5d
        assert urls.startswith("['http") and result.stdout.count(".mp4") == 2
    elif index == 1:
        accepted, errors, *statuses = result.stdout.splitlines()
        assert len(ast.literal_eval(accepted)) == 2  # a printed list of two ids
        assert errors.startswith("{2: 'request.positivePrompt")
        assert statuses == ["succeeded", "succeeded"]
    elif index == 2:
        cancelled, again = result.stdout.splitlines()
        assert cancelled == "True cancelled the user closed the tab"
        assert again.endswith("had already finished (cancelled): nothing to do")
    elif index == 3:
        assert result.stdout.splitlines() == ["['succeeded']", "1 None"]
    elif index == 4:
        assert result.stdout.splitlines() == ["['succeeded', 'succeeded', 'succeeded']"]
    elif index == 5:
        assert result.stdout.splitlines() == [str(["succeeded"] * 4)]
    else:
        assert "'created': True" in result.stdout


def test_readme_documents_every_setting() -> None:
    text = README.read_text()
    missing = [env for env, _, _ in environment_variables() if f"`{env}`" not in text]
    assert missing == []


def test_readme_receiver_example_verifies_and_dedupes(capsys: pytest.CaptureFixture[str]) -> None:
    from pollen.callbacks import webhooks

    pattern = re.compile(r"<!-- receiver-example[^>]*-->\s*```python\n(.*?)```", re.DOTALL)
    [code] = pattern.findall(README.read_text())
    secret = webhooks.new_secret()
    namespace: dict[str, object] = {}
    exec(code.replace('"whsec_..."', repr(secret)), namespace)
    handle = namespace["handle"]
    body = (
        b'{"type":"job.completed","timestamp":"2026-11-22T10:00:00Z",'
        b'"data":{"job_id":"j1","status":"succeeded"}}'
    )
    headers = webhooks.headers([secret], "msg_j1_completed", int(time.time()), body)
    assert handle(body, headers) == 200  # type: ignore[operator]
    assert handle(body, headers) == 200  # type: ignore[operator]
    assert capsys.readouterr().out == "j1 succeeded\n"  # processed once
    forged = webhooks.headers([webhooks.new_secret()], "msg_j2", int(time.time()), body)
    assert handle(body, forged) == 401  # type: ignore[operator]


def test_readme_command_table_lists_every_command() -> None:
    from typer.core import TyperGroup
    from typer.main import get_command

    from pollen.cli import app

    group = get_command(app)
    assert isinstance(group, TyperGroup)
    commands = set()
    for name, cmd in group.commands.items():
        if isinstance(cmd, TyperGroup):
            commands |= {f"{name} {sub}" for sub in cmd.commands}
        else:
            commands.add(name)
    section = README.read_text().split("## Command line", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `pollen ([a-z]+(?: (?:list|replay))?)\b", section, re.MULTILINE)
    assert sorted(rows) == sorted(commands)
