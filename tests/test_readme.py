"""The README's producer examples run as written, and its settings table is complete."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pollen.embedded import Worker
from pollen.settings import environment_variables

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_examples() -> list[str]:
    """Python blocks that directly follow a ``<!-- tested ... -->`` marker."""
    pattern = re.compile(r"<!-- tested[^>]*-->\s*```python\n(.*?)```", re.DOTALL)
    return pattern.findall(README.read_text())


def test_readme_has_both_producer_examples() -> None:
    examples = readme_examples()
    assert len(examples) == 2
    assert "Pollen()" in examples[0]
    assert 'send_task(\n    "pollen.submit"' in examples[1]
    assert "import pollen" not in examples[1] and "from pollen" not in examples[1]


@pytest.mark.integration
@pytest.mark.parametrize("index", [0, 1], ids=["client", "send_task"])
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
        assert urls.startswith("['https://") and result.stdout.count(".mp4") == 2
    else:
        assert "'created': True" in result.stdout


def test_readme_documents_every_setting() -> None:
    text = README.read_text()
    missing = [env for env, _, _ in environment_variables() if f"`{env}`" not in text]
    assert missing == []
