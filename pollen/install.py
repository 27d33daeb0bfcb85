"""How pollen is installed: the distribution on the package index is ``pollen-jobs`` (``pollen``
there is an unrelated project); the import package and the command stay ``pollen``."""

DISTRIBUTION = "pollen-jobs"


def pip_install(extra: str) -> str:
    """The command that installs pollen with ``extra``: ``pip install 'pollen-jobs[worker]'``."""
    return f"pip install '{DISTRIBUTION}[{extra}]'"
