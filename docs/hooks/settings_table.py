"""MkDocs hook: the configuration page's tables, generated from ``pollen.settings``.

Every ``POLLEN_*`` variable comes from :func:`pollen.settings.environment_variables` (what
``pollen config`` prints too), with its default and its ``Field(description=...)``, so the page
cannot drift from the code. A page asks for the tables with the marker below.
"""

from __future__ import annotations

import html
import re
from typing import Any

from pollen.settings import Settings, environment_variables

MARKER = "<!-- settings-table -->"
SHOWN = {"None": "(unset)", "(secret)": "(empty)", "(per store)": "(per store)"}


def _group(env: str) -> str:
    """The settings group of a variable: ``POLLEN_POLL__JITTER`` is in ``poll``."""
    name, nested, _ = env.removeprefix("POLLEN_").partition("__")
    return name.lower() if nested else ""


def _title(group: str) -> str:
    """A group's heading: its model's summary line, up to its first colon or semicolon."""
    if not group:
        return "General"
    model = Settings.model_fields[group].annotation
    summary = " ".join((getattr(model, "__doc__", "") or "").split())
    summary = re.split(r"[:;] |\. ", summary, maxsplit=1)[0].rstrip(".").replace("``", "`")
    return f"`POLLEN_{group.upper()}__*`: {summary}"


def _cell(text: str) -> str:
    """Plain text as a Markdown table cell: no HTML, no emphasis, no column breaks."""
    return html.escape(text, quote=False).replace("|", "\\|").replace("*", "\\*")


def _default(shown: str) -> str:
    return SHOWN.get(shown) or f"`{shown.strip(chr(39))}`"


def settings_markdown() -> str:
    """One table per settings group (variable, default, meaning), the top-level ones first."""
    groups: dict[str, list[tuple[str, str, str]]] = {"": []}
    for row in environment_variables():
        groups.setdefault(_group(row[0]), []).append(row)
    parts: list[str] = []
    for group, rows in groups.items():
        heading = f"## {_title(group)} {{ #{group or 'general'} }}"
        parts += [heading, "", "| variable | default | meaning |", "|---|---|---|"]
        parts += [f"| `{env}` | {_default(shown)} | {_cell(text)} |" for env, shown, text in rows]
        parts.append("")
    return "\n".join(parts)


def on_page_markdown(markdown: str, **_: Any) -> str:
    return markdown.replace(MARKER, settings_markdown()) if MARKER in markdown else markdown
