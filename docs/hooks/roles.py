"""MkDocs hook: Sphinx cross-reference roles in docstrings (``:class:`Job```) read as code.

pollen's docstrings name other objects the Sphinx way; mkdocstrings renders the name as code
and would leave the role in front of it (``:class:Job``). This drops the role.
"""

from __future__ import annotations

import re
from typing import Any

ROLE = re.compile(r":(?:attr|class|data|exc|func|meth|mod|obj):(?=<code>)")


def on_page_content(html: str, **_: Any) -> str:
    return ROLE.sub("", html)
