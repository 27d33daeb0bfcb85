"""The code examples of the README and the docs pages run as written; the command table is
complete. (The configuration page is generated from the settings: see test_docs.py.)"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pollen.local.servers import Worker

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: every page whose code examples run here: the README and the docs site's pages
SOURCES = [README, *sorted((ROOT / "docs").glob("*.md"))]
TESTED = re.compile(r"<!-- tested: ([a-z_]+) -->\s*```python\n(.*?)```", re.DOTALL)
#: what may stand right before a python block: run here, or says why it is not
MARKER = re.compile(r"<!-- (?:tested: [a-z_]+|receiver-example[^>]*|not run: [^>]+) -->\s*$")


def examples() -> dict[str, str]:
    """Python blocks that directly follow a ``<!-- tested: NAME -->`` marker, by name."""
    found: dict[str, str] = {}
    for path in SOURCES:
        for name, code in TESTED.findall(path.read_text()):
            assert name not in found, f"two examples named {name}"
            found[name] = code
    return found


def check_client(out: str) -> None:
    assert out.splitlines()[0] in {"queued", "submitted"}
    status, urls, *_ = out.splitlines()[1].split(" ", 2)
    assert status == "succeeded"
    # result URLs are the simulator's own /media files (http) since 58cfc5d
    assert urls.startswith("['http") and out.count(".mp4") == 2


def check_submit_many(out: str) -> None:
    accepted, errors, *statuses = out.splitlines()
    assert len(ast.literal_eval(accepted)) == 2  # a printed list of two ids
    assert errors.startswith("{2: 'request.positivePrompt")
    assert statuses == ["succeeded", "succeeded"]


def check_cancel(out: str) -> None:
    cancelled, again = out.splitlines()
    assert cancelled == "True cancelled the user closed the tab"
    assert again.endswith("had already finished (cancelled): nothing to do")


def check_jobs(out: str) -> None:
    assert out.splitlines() == ["['succeeded']", "1 None"]


def check_asyncio(out: str) -> None:
    assert out.splitlines() == ["['succeeded', 'succeeded', 'succeeded']"]


def check_typed(out: str) -> None:
    assert out.splitlines() == [str(["succeeded"] * 4)]


def check_send_task(out: str) -> None:
    assert "'created': True" in out


def check_tenants(out: str) -> None:
    assert out.splitlines() == ["succeeded acme 10", "True"]


def check_unreachable(out: str) -> None:
    assert out.startswith("503 Service Unavailable: Redis is unreachable")


CHECKS: dict[str, Callable[[str], None]] = {
    "client": check_client,
    "submit_many": check_submit_many,
    "cancel": check_cancel,
    "jobs": check_jobs,
    "asyncio": check_asyncio,
    "typed": check_typed,
    "send_task": check_send_task,
    "unreachable": check_unreachable,
    "tenants": check_tenants,
}


def test_every_python_example_runs_or_says_why() -> None:
    unmarked = []
    for path in SOURCES:
        text = path.read_text()
        for block in re.finditer(r"^```python$", text, re.MULTILINE):
            before = text[: block.start()].rstrip("\n").rsplit("\n", 1)[-1]
            if not MARKER.match(before):
                unmarked.append(f"{path.name}:{text.count(chr(10), 0, block.start()) + 1}")
    assert unmarked == []


def test_the_producer_examples_are_all_there() -> None:
    found = examples()
    assert sorted(found) == sorted(CHECKS)
    assert "Pollen()" in found["client"]
    assert "submit_many(" in found["submit_many"]
    assert ".cancel(" in found["cancel"]
    assert ".jobs(" in found["jobs"]
    assert "AsyncPollen()" in found["asyncio"]
    assert "RunwareImageRequest(" in found["typed"] and "CometRunwayRequest(" in found["typed"]
    assert 'send_task(\n    "pollen.submit"' in found["send_task"]
    assert "redis_timeout=" in found["unreachable"]
    assert 'tenant="acme"' in found["tenants"] and "priority=10" in found["tenants"]
    assert "import pollen" not in found["send_task"]
    assert "from pollen" not in found["send_task"]


@pytest.mark.integration
@pytest.mark.parametrize("name", list(CHECKS))
def test_example_runs(name: str, worker: Worker, worker_env: dict[str, str], clean: None) -> None:
    result = subprocess.run(
        [sys.executable, "-c", examples()[name]],
        env={**os.environ, **worker_env},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    CHECKS[name](result.stdout)


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


#: an install line that names the package index's "pollen" (an unrelated project), not ours
TAKEN_NAME = re.compile(r"pip install (?:pollen\b(?![-_.\w])|'pollen\[)")


def test_install_lines_name_the_distribution_pollen_jobs() -> None:
    """pollen is published as ``pollen-jobs``; the pages and the code's hints say so (the
    changelog may tell what the old name installs)."""
    sources = [*SOURCES, *sorted((ROOT / "pollen").rglob("*.py"))]
    found = [f"{p.name}: {m[0]}" for p in sources for m in TAKEN_NAME.finditer(p.read_text())]
    assert found == []
    assert TAKEN_NAME.search("pip install pollen  # the producer")
    assert TAKEN_NAME.search("pip install 'pollen[worker]'")
    assert not TAKEN_NAME.search("pip install pollen-jobs 'pollen-jobs[worker]'")
    assert "`pollen-jobs`" in README.read_text().split("## Install", 1)[1].split("\n## ", 1)[0]
