"""Commands run beside `make run` find its database and keys (README: the auditors' commands)."""

from __future__ import annotations

import os

from app import cli
from app.core.settings import Settings, get_settings


def test_a_command_beside_make_run_uses_its_database_and_keys(tmp_path, monkeypatch):
    for name in ("DATABASE_URL", "JWT_SECRET", "SIGNING_KEY_FILE", "LEDGER_SECRET_FILE", "CHECKPOINT_DIR"):
        monkeypatch.setenv(name, "")  # recorded, so what the command sets is undone after the test
        monkeypatch.delenv(name)
    settings = Settings(data_dir=tmp_path, embedded_pg_port=54999)
    assert not cli._use_dev_database(settings)  # no `make run` here: nothing set
    assert "DATABASE_URL" not in os.environ
    (tmp_path / "pg.consent_ledger_runtime-password").write_text("s3cret\n")
    try:
        assert cli._use_dev_database(settings)
        assert os.environ["DATABASE_URL"] == \
            "postgresql+asyncpg://consent_ledger_runtime:s3cret@127.0.0.1:54999/consent_ledger"
        assert (tmp_path / "signing-key.pem").exists() and os.environ["LEDGER_SECRET_FILE"].startswith(str(tmp_path))
        assert not cli._use_dev_database(Settings(data_dir=tmp_path, database_url="postgresql+asyncpg://x/y"))
    finally:
        get_settings.cache_clear()
