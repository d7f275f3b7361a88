"""Messages to the user go through ``logging`` under the ``edgeclin`` logger.

Warnings (truncated inputs, skipped rows, a degenerate model) always reach standard error:
with no handler configured, Python's last-resort handler prints them. The command line adds
a handler that also shows progress notes (INFO), unless ``--quiet``.
"""

from __future__ import annotations

import logging
import sys

ROOT = "edgeclin"


def get_logger(name: str) -> logging.Logger:
    """The logger of one edgeclin module: ``get_logger(__name__)``."""
    return logging.getLogger(name if name.startswith(ROOT) else f"{ROOT}.{name}")


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (click's test runner swaps it)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # logging.StreamHandler sets it in __init__; ignore
        pass


def configure_cli(quiet: bool = False) -> None:
    """One plain-text handler on the edgeclin logger: INFO and up, or WARNING and up when quiet."""
    logger = logging.getLogger(ROOT)
    for handler in list(logger.handlers):
        if isinstance(handler, _CurrentStderr):
            logger.removeHandler(handler)
    handler = _CurrentStderr()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
