"""Fixtures for the CLI and flow tests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _restore_environment():
    """The CLI sets process-wide defaults (PREFECT_HOME, log levels); keep them out of other tests."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
