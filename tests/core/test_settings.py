"""Settings read from the environment: bounds refused at start, not at the first request."""

from __future__ import annotations

import pytest

from app.core.settings import Settings


def test_export_parallel_workers_is_bounded(monkeypatch):
    monkeypatch.setenv("EXPORT_PARALLEL_WORKERS", "3")
    assert Settings.from_env().export_parallel_workers == 3
    for bad in ("-1", "65"):
        monkeypatch.setenv("EXPORT_PARALLEL_WORKERS", bad)
        with pytest.raises(ValueError, match="EXPORT_PARALLEL_WORKERS"):
            Settings.from_env()
