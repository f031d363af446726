"""The committed openapi.json is what the app generates; regenerate with `make openapi`."""

from __future__ import annotations

import json
from pathlib import Path

from app.openapi import document

ROOT = Path(__file__).resolve().parents[1]


def test_committed_openapi_matches_the_app():
    committed = (ROOT / "openapi.json").read_text()
    assert committed == document(), "openapi.json is stale: run `make openapi` and commit it"


def test_operation_ids_are_stable_and_unique():
    spec = json.loads(document())
    ids = [op["operationId"] for path in spec["paths"].values() for op in path.values()]
    assert len(ids) == len(set(ids))
    assert all("-" in i and "_" not in i for i in ids), ids
