"""The documentation site builds strictly (no broken link, anchor or snippet) and says what the
code does: the configuration page lists every setting, the reference documents the clients."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from html import unescape
from pathlib import Path

import pytest

from pollen.settings import environment_variables

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``mkdocs build --strict`` into a temporary directory (a warning fails the build)."""
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # mkdocs' own notice, not ours
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    return out


def page(site: Path, name: str) -> str:
    return (site / name / "index.html").read_text()


def text(html: str) -> str:
    """What a reader sees of a page: its text without tags (code is split by highlighting)."""
    return unescape(re.sub(r"<[^>]+>", "", html))


def test_every_nav_page_is_built(site: Path) -> None:
    nav = re.findall(r"^\s+- [^:]+: ([a-z-]+)\.md$", (ROOT / "mkdocs.yml").read_text(), re.M)
    assert len(nav) == 17
    missing = [name for name in nav if name != "index" and not (site / name).is_dir()]
    assert missing == []


def test_configuration_page_lists_every_setting(site: Path) -> None:
    html = page(site, "configuration")
    missing = [env for env, _, _ in environment_variables() if f"<code>{env}</code>" not in html]
    assert missing == []
    assert "Seconds a poll's claim on its jobs lasts" in text(html)  # a description
    headings = re.findall(r'<h2 id="([^"]+)"', html)
    assert headings[0] == "general" and len(headings) == len(set(headings))  # one per group


def test_readme_sections_are_included_not_copied(site: Path) -> None:
    start = text((site / "index.html").read_text())
    assert "tasks/demo" in start and "pollen.wait(job_id" in start
    assert "pollen callbacks replay" in start  # the command table
    assert "webhook.verify(body, headers)" in text(page(site, "callbacks"))
    assert "Unreleased" in text(page(site, "changelog"))


def test_reference_documents_the_public_surface(site: Path) -> None:
    html = page(site, "reference")
    for name in (
        "pollen.Pollen.submit",
        "pollen.AsyncPollen.wait",
        "pollen.models.JobStatus",
        "pollen.errors.InvalidJob",
        "pollen.settings.Settings",
        "pollen.callbacks.webhooks.verify",
        "pollen.backoff.next_delay",
    ):
        assert f'id="{name}"' in html, name
    assert ":class:" not in text(html)  # the docstrings' Sphinx roles are dropped


def test_how_it_works_has_its_diagram_and_tables(site: Path) -> None:
    html = page(site, "how-it-works")
    assert '<pre class="mermaid">' in html
    assert "The three ways a next poll waits" in html
    assert "The three ways a callback goes out" in html
    assert "pollen.worker.planner" in html


def test_readme_stays_a_front_door() -> None:
    assert len((ROOT / "README.md").read_bytes()) <= 12 * 1024
