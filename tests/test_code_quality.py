"""The linters are part of the suite: ruff over everything, mypy (strict on raft/)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, check=False
    )


def test_ruff_is_clean() -> None:
    result = _run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("package", ["raft", "kvstore", "cli", "jepsen_like"])
def test_mypy_is_clean(package: str) -> None:
    result = _run("mypy", package)
    assert result.returncode == 0, result.stdout + result.stderr
