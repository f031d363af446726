"""Configuration from the environment; read once per process, never mutated at run time."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path


def _csv(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    # Audit reads (search, export, per-subject verify, the audit bundle) go here when set: a read
    # replica of the same database (docs/audit.md); unset, they read the primary like everything else.
    audit_database_url: str | None = None
    # Least privilege (README, "Database roles"): migrations run as the owner role (DATABASE_OWNER_URL;
    # unset: DATABASE_URL, one account for everything, with a warning); the API and the worker run
    # as the runtime role (DATABASE_URL), named here so the migrations know whom to grant to.
    database_owner_url: str | None = None
    db_runtime_role: str = "consent_ledger_runtime"
    data_dir: Path = Path(".data")
    embedded_pg_port: int = 54329

    jwt_algorithms: tuple[str, ...] = ("HS256",)
    jwt_secret: str | None = None
    jwt_public_key_file: Path | None = None
    jwt_jwks_file: Path | None = None
    jwt_issuer: str = "consent-ledger-dev"
    jwt_audience: str = "consent-ledger"
    jwt_leeway_seconds: int = 30

    # The most connections one API process holds: DB_CATALOG_POOL_SIZE of them for the catalog's
    # SQLAlchemy engine, the rest for the ledger's asyncpg pool (recording, reads, webhook admin).
    db_pool_size: int = 24
    db_catalog_pool_size: int = 4
    # Bounded waits, so a hung database, a held row lock or a full pool is a 503 in seconds (never
    # a request that hangs): taking a pooled connection, opening one, waiting for a row lock, and
    # one statement (the client gives up a little after the server would have cancelled it).
    db_acquire_timeout_seconds: float = 5
    db_connect_timeout_seconds: float = 5
    db_lock_timeout_seconds: float = 5
    db_statement_timeout_seconds: float = 15
    # How long a process trusts that a tenant it has seen still exists (unknown ones are never remembered).
    tenant_cache_seconds: float = 60
    # Bounded growth: an Idempotency-Key replays its first result this long after that first use;
    # delivered webhook messages and their attempts are kept this long, dead letters longer; the
    # purge (worker, `consent-ledger purge`) deletes in batches of purge_batch_size rows per statement.
    idempotency_key_ttl_seconds: float = 7 * 86400
    webhook_retention_days: float = 30
    webhook_dead_letter_retention_days: float = 365
    purge_interval_seconds: float = 3600
    purge_batch_size: int = 1000
    # The ledger's own raw evidence (IP, user agent, guardian verification) is personal data with a
    # retention: older than this it is purged by the worker's purge, its commitment and the chain kept
    # (docs/duties.md; 0: never). Default 3 years: complaint and dispute records (e-commerce act Art. 6).
    evidence_retention_days: float = 3 * 365

    # HTTP edge: bodies past this many bytes are a 413 before anything parses them.
    max_request_body_bytes: int = 1024 * 1024
    # POST /v1/permissions/{channel}/check: 100,000 member ids as JSON, or an NDJSON stream of any count
    max_audience_body_bytes: int = 256 * 1024 * 1024
    # How often the worker applies reclassifications whose date has come (app/catalog/scheduled.py)
    basis_change_interval_seconds: float = 60
    # How often the worker announces duties that came due and marks overdue ones (app/duties/scheduler.py)
    duty_interval_seconds: float = 10
    # GET /metrics: with a token, `Authorization: Bearer <token>` from anyone; without one, loopback
    # clients only unless metrics_public.
    metrics_token: str | None = None
    metrics_public: bool = False
    log_level: str = "INFO"

    # Proof (docs/proof.md): keys kept outside the database. The Ed25519 key signs checkpoints and
    # receipts (retired public keys stay listed in the JWKS from signing_public_keys_file); the
    # ledger secret (32+ bytes) seals events and commits to raw evidence.
    signing_key_file: Path | None = None
    signing_key: str | None = None
    signing_public_keys_file: Path | None = None
    ledger_secret_file: Path | None = None
    ledger_secret: str | None = None
    # A form that showed a notice version superseded less than this long ago is still recorded.
    notice_grace_seconds: float = 600
    # A checkpoint at least this often while there are new events; each one also written here.
    checkpoint_interval_seconds: float = 60
    checkpoint_dir: Path | None = None
    # Tenant-wide verification runs (app/audit/verify_job.py): how often the worker looks for one,
    # subjects per batch (one snapshot, one committed step), how long a silent worker keeps its run,
    # and worker processes checking batches (0: one per CPU, at most 4; 1: in the worker itself).
    verification_interval_seconds: float = 5
    verification_batch_subjects: int = 1000
    verification_lease_seconds: float = 30
    verification_jobs: int = 0

    # Webhooks. Delays (seconds) before attempt 1, 2, ...; one attempt per entry, then a dead letter.
    webhook_retry_schedule: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
    webhook_retry_jitter: float = 0.1
    webhook_max_retry_after_seconds: float = 86400
    webhook_connect_timeout_seconds: float = 5
    webhook_timeout_seconds: float = 15
    webhook_lease_seconds: float = 60
    webhook_poll_seconds: float = 5
    webhook_concurrency: int = 64
    webhook_max_in_flight_per_endpoint: int = 16
    webhook_disable_after_seconds: float = 5 * 86400
    webhook_secret_grace_seconds: int = 86400
    # Hosts or networks exempt from the SSRF guard and allowed plain http (e.g. "127.0.0.1,::1").
    webhook_allowed_hosts: tuple[str, ...] = ()
    # The worker's own name lookups: answers kept this long, at most this many lookups at once.
    webhook_dns_cache_seconds: float = 30
    webhook_dns_threads: int = 8
    # The worker's Prometheus endpoint (port 0: none) and how often it re-reads the outbox backlog.
    worker_metrics_host: str = "127.0.0.1"
    worker_metrics_port: int = 9464
    worker_metrics_interval_seconds: float = 15

    @classmethod
    def from_env(cls) -> "Settings":
        """Each field from the variable of its name in capitals (data_dir: CONSENT_LEDGER_DATA_DIR);
        an unset variable keeps the default above, so every default is written once."""
        values = {}
        for field in fields(cls):
            raw = os.environ.get(_ENV_NAMES.get(field.name, field.name.upper()))
            if raw is not None:
                values[field.name] = _PARSERS[field.type](raw)
        if values.get("webhook_retry_schedule") == ():
            raise ValueError("WEBHOOK_RETRY_SCHEDULE needs at least one delay")
        return cls(**values)


_ENV_NAMES = {"data_dir": "CONSENT_LEDGER_DATA_DIR"}
# By the field's annotation (a string: annotations are postponed). An empty optional is None.
_PARSERS = {
    "int": int, "float": float, "str": str, "Path": Path,
    "str | None": lambda v: v or None,
    "Path | None": lambda v: Path(v) if v else None,
    "bool": lambda v: v.lower() in ("1", "true", "yes"),
    "tuple[str, ...]": _csv,
    "tuple[float, ...]": lambda v: tuple(float(item) for item in _csv(v)),
}


@lru_cache
def get_settings() -> Settings:
    return Settings.from_env()
