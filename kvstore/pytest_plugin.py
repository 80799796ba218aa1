"""pytest fixtures for testing against a real cluster.

Enable with ``pytest_plugins = ["kvstore.pytest_plugin"]`` in ``conftest.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kvstore.local_cluster import ProcessCluster
from kvstore.testing import process_cluster


@pytest.fixture
def kvstore_cluster() -> Iterator[ProcessCluster]:
    """A 3-member cluster of real ``kvctl server`` processes, for one test;
    ``kvstore_cluster.endpoints`` lists where to connect."""
    with process_cluster() as cluster:
        yield cluster
