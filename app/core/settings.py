"""Configuration from the environment; read once per process, never mutated at run time."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path


def _csv(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    data_dir: Path = Path(".data")
    embedded_pg_port: int = 54329

    jwt_algorithms: tuple[str, ...] = ("HS256",)
    jwt_secret: str | None = None
    jwt_public_key_file: Path | None = None
    jwt_jwks_file: Path | None = None
    jwt_issuer: str = "consent-ledger-dev"
    jwt_audience: str = "consent-ledger"
    jwt_leeway_seconds: int = 30

    db_pool_size: int = 10
    db_max_overflow: int = 10

    @classmethod
    def from_env(cls) -> "Settings":
        env = os.environ
        public_key = env.get("JWT_PUBLIC_KEY_FILE")
        jwks = env.get("JWT_JWKS_FILE")
        return cls(
            database_url=env.get("DATABASE_URL") or None,
            data_dir=Path(env.get("CONSENT_LEDGER_DATA_DIR", ".data")),
            embedded_pg_port=int(env.get("EMBEDDED_PG_PORT", "54329")),
            jwt_algorithms=_csv(env.get("JWT_ALGORITHMS", "HS256")),
            jwt_secret=env.get("JWT_SECRET") or None,
            jwt_public_key_file=Path(public_key) if public_key else None,
            jwt_jwks_file=Path(jwks) if jwks else None,
            jwt_issuer=env.get("JWT_ISSUER", "consent-ledger-dev"),
            jwt_audience=env.get("JWT_AUDIENCE", "consent-ledger"),
            jwt_leeway_seconds=int(env.get("JWT_LEEWAY_SECONDS", "30")),
            db_pool_size=int(env.get("DB_POOL_SIZE", "10")),
            db_max_overflow=int(env.get("DB_MAX_OVERFLOW", "10")),
        )


@lru_cache
def get_settings() -> Settings:
    return Settings.from_env()
