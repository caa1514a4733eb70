"""Fixtures of the worker tests (their helpers are in tests/worker/builders.py)."""

from collections.abc import Callable
from pathlib import Path

import pytest

from descent.settings import Settings
from tests.conftest import migrated


@pytest.fixture
def fast_lease(configure: Callable[..., Settings], tmp_path: Path) -> Settings:
    """SQLite, with a lease that times out in half a second (heartbeats every 0.1 s)."""
    return migrated(
        configure(
            DESCENT_DATA_DIR=str(tmp_path / "data"),
            DESCENT_LEASE_TIMEOUT_SECONDS="0.5",
            DESCENT_HEARTBEAT_SECONDS="0.1",
        )
    )
