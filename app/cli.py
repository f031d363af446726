"""The `consent-ledger` command: serve, worker, migrate, token, seed, dev."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

from app.core.settings import Settings, get_settings
from app.proof import cli as proof_cli
from app.catalog import cli as catalog_cli

ROOT = Path(__file__).resolve().parents[1]


def alembic_root() -> Path:
    """The checkout's alembic.ini, or the working directory's in an installed image."""
    return ROOT if (ROOT / "alembic.ini").exists() else Path.cwd()
DEV_SCOPES = ("consents:write", "consents:read", "catalog:write", "catalog:read", "audit:read", "webhooks:admin",
              "duties:read", "duties:write")


def migrate(database_url: str | None = None, runtime_role: str | None = None) -> None:
    """Upgrade to head as the OWNER role: `database_url`, else DATABASE_OWNER_URL, else DATABASE_URL
    (alembic/env.py); the runtime privileges go to `runtime_role`, else DB_RUNTIME_ROLE."""
    from alembic import command
    from alembic.config import Config

    root = alembic_root()
    config = Config(str(root / "alembic.ini"))
    config.set_main_option("script_location", str(root / "alembic"))
    if database_url:
        config.attributes["database_url"] = database_url
    if runtime_role:
        config.attributes["runtime_role"] = runtime_role
    command.upgrade(config, "head")


def migrate_as_owner(settings: Settings) -> None:
    """`migrate` and `serve --migrate`: DATABASE_OWNER_URL, or DATABASE_URL with a warning."""
    import logging

    from app.core.logging import configure as configure_logging

    url = settings.database_owner_url
    if not url:
        if not settings.database_url:
            raise SystemExit("DATABASE_OWNER_URL (or DATABASE_URL) is not set")
        configure_logging(settings.log_level)
        logging.getLogger("consent_ledger").warning(
            "DATABASE_OWNER_URL is not set: migrating with DATABASE_URL, so one account owns the schema and "
            "serves the API (no owner/runtime split; README, Database roles)")
        url = settings.database_url
    migrate(url, settings.db_runtime_role)


def seed(settings: Settings) -> list[str]:
    from app.core.db import create_engine, session_factory
    from app.demo.loader import load_demo

    async def run() -> list[str]:
        engine = create_engine(settings.database_url, settings)
        try:
            return await load_demo(session_factory(engine))
        finally:
            await engine.dispose()

    return asyncio.run(run())


def tenant(settings: Settings, args: argparse.Namespace) -> int:
    """`tenant create KEY --name ...` / `tenant list`: tenants exist only when an operator says so."""
    from app.catalog import tenants
    from app.core.db import create_engine, session_factory
    from app.core.errors import ProblemError

    async def run() -> int:
        engine = create_engine(settings.database_url, settings)
        try:
            async with session_factory(engine)() as session, session.begin():
                if args.action == "list":
                    for row in await tenants.list_tenants(session):
                        print("\t".join([row.id, row.name, row.name_en or "", row.created_at.isoformat()]))
                    return 0
                try:
                    row = await tenants.create_tenant(session, key=args.key, name=args.name, name_en=args.name_en)
                except ProblemError as exc:
                    reasons = "; ".join(f"{e.field}: {e.reason}" for e in exc.errors)
                    print(f"{exc.detail}{f' ({reasons})' if reasons else ''}", file=sys.stderr)
                    return 1
                print(f"created tenant {row.id} ({row.name})")
                return 0
        finally:
            await engine.dispose()

    if not settings.database_url:
        print("DATABASE_URL is not set", file=sys.stderr)
        return 2
    return asyncio.run(run())


def purge(settings: Settings) -> int:
    """One purge pass now (the worker also runs one every PURGE_INTERVAL_SECONDS)."""
    from app.core.retention import purge_now, summary

    if not settings.database_url:
        print("DATABASE_URL is not set", file=sys.stderr)
        return 2
    print("purged: " + summary(asyncio.run(purge_now(settings))))
    return 0


def serve(host: str, port: int, workers: int) -> None:
    import uvicorn

    from app.core.logging import config as log_config

    # JSON lines; uvicorn's access log is off because it prints client addresses (Edge logs requests).
    level = get_settings().log_level
    uvicorn.run("app.main:create_app", factory=True, host=host, port=port, workers=workers,
                proxy_headers=True, log_level=level.lower(), access_log=False, log_config=log_config(level))


def worker(concurrency: int | None) -> None:
    from app.core.logging import configure as configure_logging
    from app.webhooks.dispatcher import run_worker

    configure_logging(get_settings().log_level)
    settings = get_settings()
    if not settings.database_url:
        raise SystemExit("DATABASE_URL is not set")
    if concurrency:
        from dataclasses import replace

        settings = replace(settings, webhook_concurrency=concurrency)
    asyncio.run(run_worker(settings))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _start_worker() -> subprocess.Popen:
    """The dev webhook worker, a separate process as in production, sharing this environment. In
    a session of its own: Ctrl-C stops the server, which then stops the worker (the supervisor
    would otherwise see it die first and start another)."""
    return subprocess.Popen([sys.executable, "-m", "app.cli", "worker"], env=os.environ.copy(),
                            start_new_session=True)


def issue_token(settings: Settings, tenant: str, sub: str, scopes: list[str], ttl: int) -> str:
    from app.auth.tokens import issue

    return issue(settings, tenant=tenant, sub=sub, scopes=scopes, ttl_seconds=ttl)


def _dev_secret(data_dir: Path) -> str:
    path = data_dir / "dev-jwt-secret"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


DEV_DATABASE = "consent_ledger"


def _dev_proof_keys(data_dir: Path) -> None:
    """The signing key and the ledger secret `make run` keeps under ./.data (0600), made once: a
    replaced key would orphan every seal and signature made with the old one. Checkpoints are also
    written to ./.data/checkpoints, outside the database."""
    from app.proof import keys

    key, secret = data_dir / "signing-key.pem", data_dir / "ledger-secret"
    if not key.exists():
        keys.generate_key_file(key)
    if not secret.exists():
        keys.generate_secret_file(secret)
    os.environ.setdefault("SIGNING_KEY_FILE", str(key))
    os.environ.setdefault("LEDGER_SECRET_FILE", str(secret))
    os.environ.setdefault("CHECKPOINT_DIR", str(data_dir / "checkpoints"))


def _dev_keys(data_dir: Path) -> None:
    """The dev token secret and proof keys under `data_dir`, unless the environment names others."""
    os.environ.setdefault("JWT_SECRET", _dev_secret(data_dir))
    _dev_proof_keys(data_dir)


def _use_dev_database(settings: Settings) -> bool:
    """A command run beside `make run` (no DATABASE_URL, `./.data` made by `consent-ledger dev`):
    the dev database as the runtime role, with the dev keys, as the server uses them. The server
    must be running (it runs the embedded PostgreSQL). False, and nothing set, otherwise."""
    from app.core import roles
    from app.core.embedded_pg import EmbeddedPostgres

    if settings.database_url:
        return False
    data_dir = settings.data_dir.resolve()
    url = EmbeddedPostgres(data_dir / "pg", settings.embedded_pg_port).role_url(roles.RUNTIME_ROLE, DEV_DATABASE)
    if url is None:
        return False
    os.environ["DATABASE_URL"] = url
    _dev_keys(data_dir)
    get_settings.cache_clear()
    return True


def evidence(settings: Settings, args: argparse.Namespace) -> int:
    """`evidence purge --before T`: destroy raw evidence (IP, user agent, guardian verification)
    recorded before T; the chain keeps its commitments, so every proof stays valid."""
    import getpass
    from datetime import datetime

    import asyncpg

    from app.consents.evidence import purge as purge_evidence

    if not settings.database_url:
        print("DATABASE_URL is not set", file=sys.stderr)
        return 2
    try:
        before = datetime.fromisoformat(args.before.replace("Z", "+00:00"))
    except ValueError:
        print(f"--before {args.before!r} is not an ISO 8601 instant", file=sys.stderr)
        return 2
    if before.tzinfo is None:
        print("--before needs an offset (e.g. 2026-01-01T00:00:00+09:00 or ...Z)", file=sys.stderr)
        return 2

    async def run() -> int:
        conn = await asyncpg.connect(settings.database_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            return await purge_evidence(conn, before, args.by or f"cli:{getpass.getuser()}")
        finally:
            await conn.close()

    try:
        count = asyncio.run(run())
    except asyncpg.PostgresError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    print(f"purged the raw evidence of {count} act(s) recorded before {before.isoformat()}")
    return 0


def dev(host: str, port: int) -> None:
    """Embedded PostgreSQL under ./.data, migrations (as the owner role), demo tenants, a token, and
    the server and worker (as the runtime role)."""
    from app.core import roles
    from app.core.embedded_pg import EmbeddedPostgres

    settings = get_settings()
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    _dev_keys(data_dir)
    # The demo's processors run their receivers on this machine; a real deployment lists none.
    os.environ.setdefault("WEBHOOK_ALLOWED_HOSTS", "127.0.0.1,::1,localhost")
    pg = None
    workers = None
    if not settings.database_url:
        pg = EmbeddedPostgres(data_dir / "pg", settings.embedded_pg_port, database=DEV_DATABASE)
        print(f"starting embedded PostgreSQL (data in {pg.pgdata}) ...", flush=True)
        pg.start()
        if pg.has_schema("postgres"):
            print(f"note: data from before the owner/runtime roles stays in database postgres; "
                  f"this run uses database {DEV_DATABASE}", flush=True)
        owner_url, runtime_url = pg.ensure_roles(DEV_DATABASE)
        os.environ["DATABASE_OWNER_URL"] = owner_url
        os.environ["DATABASE_URL"] = runtime_url  # the server, the seed and the worker (its env)
        os.environ["DB_RUNTIME_ROLE"] = roles.RUNTIME_ROLE
    get_settings.cache_clear()
    settings = get_settings()
    try:
        migrate(settings.database_owner_url or settings.database_url, settings.db_runtime_role)
        created = seed(settings)
        token = issue_token(settings, "smallticket", "dev-operator", list(DEV_SCOPES), 30 * 24 * 3600)
        print("\n".join([
            "",
            f"consent-ledger is starting on http://{host}:{port}",
            f"  interactive docs: http://{host}:{port}/docs",
            f"  demo tenants: smallticket, ticketpartner{' (loaded now)' if created else ''}",
            "  webhook worker: running (receivers allowed on "
            f"{os.environ['WEBHOOK_ALLOWED_HOSTS']} via WEBHOOK_ALLOWED_HOSTS)",
            "  development token (tenant smallticket, 30 days):",
            "",
            f"export TOKEN={token}",
            "",
        ]), flush=True)
        from app.webhooks.supervisor import WorkerSupervisor

        workers = WorkerSupervisor(_start_worker, say=lambda line: print(line, flush=True)).start()
        # uvicorn re-raises SIGTERM once it has shut down; make that unwind through `finally`
        # (stopping the worker and PostgreSQL) as Ctrl-C does, instead of killing this process.
        signal.signal(signal.SIGTERM, _interrupt)
        serve(host, port, 1)
    finally:
        if workers is not None:
            workers.stop(timeout=30)
        if pg is not None:
            print("stopping embedded PostgreSQL ...", flush=True)
            pg.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="consent-ledger", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    p_serve = commands.add_parser("serve", help="serve the API (DATABASE_URL required)")
    p_serve.add_argument("--host", default="127.0.0.1")
    p_serve.add_argument("--port", type=int, default=8000)
    p_serve.add_argument("--workers", type=int, default=1)
    p_serve.add_argument("--migrate", action="store_true",
                         help="run migrations first, as DATABASE_OWNER_URL (then serve as DATABASE_URL)")
    p_worker = commands.add_parser("worker", help="deliver webhooks until SIGTERM (DATABASE_URL required)")
    p_worker.add_argument("--concurrency", type=int, help="sends in flight at once (WEBHOOK_CONCURRENCY)")
    commands.add_parser("migrate", help="upgrade the database schema to head (as DATABASE_OWNER_URL)")
    commands.add_parser("seed", help="load the demo tenants if they are missing")
    commands.add_parser("purge", help="delete old delivered webhook messages, old dead letters, expired "
                                      "idempotency keys (in batches; never ledger events)")
    p_tenant = commands.add_parser("tenant", help="create or list tenants (DATABASE_URL required)")
    tenant_actions = p_tenant.add_subparsers(dest="action", required=True)
    p_tenant_create = tenant_actions.add_parser("create", help="create a tenant; tokens may name it at once")
    p_tenant_create.add_argument("key", help="what tokens carry in their `tenant` claim: lowercase, digits, '-'")
    p_tenant_create.add_argument("--name", required=True, help="the controller's name as notices show it")
    p_tenant_create.add_argument("--name-en", help="the name in English")
    tenant_actions.add_parser("list", help="print key, name, English name, creation time (tab-separated)")
    p_evidence = commands.add_parser("evidence", help="raw evidence kept apart from the chain (DATABASE_URL)")
    evidence_actions = p_evidence.add_subparsers(dest="action", required=True)
    p_evidence_purge = evidence_actions.add_parser(
        "purge", help="destroy raw IP, user agent and guardian evidence recorded before --before; proofs stay valid")
    p_evidence_purge.add_argument("--before", required=True, help="ISO 8601 instant with offset")
    p_evidence_purge.add_argument("--by", help="who purges (kept in evidence_purges; default: cli:<os user>)")
    proof_cli.add_commands(commands)
    catalog_cli.add_commands(commands)
    p_token = commands.add_parser("token", help="print a signed development token (HS256, JWT_SECRET)")
    p_token.add_argument("--tenant", default="smallticket")
    p_token.add_argument("--sub", default="dev-operator")
    p_token.add_argument("--scope", action="append", help="repeatable; default: every operator scope")
    p_token.add_argument("--ttl", type=int, default=3600, help="seconds")
    p_dev = commands.add_parser("dev", help="embedded PostgreSQL + migrate + demo data + serve")
    p_dev.add_argument("--host", default="127.0.0.1")
    p_dev.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)

    settings = get_settings()
    if args.command not in ("dev", "token", "serve", "worker", "migrate") and _use_dev_database(settings):
        settings = get_settings()
    if args.command == "serve":
        if args.migrate:
            migrate_as_owner(settings)  # then serve with DATABASE_URL (the runtime role)
            os.environ.pop("DATABASE_OWNER_URL", None)  # not handed on to uvicorn's worker processes
        serve(args.host, args.port, args.workers)
    elif args.command == "worker":
        worker(args.concurrency)
    elif args.command == "migrate":
        migrate_as_owner(settings)
    elif args.command == "purge":
        return purge(settings)
    elif args.command == "evidence":
        return evidence(settings, args)
    elif args.command in proof_cli.COMMANDS:
        return proof_cli.run(args, settings)
    elif args.command in catalog_cli.COMMANDS:
        return catalog_cli.run(args, settings)
    elif args.command == "tenant":
        return tenant(settings, args)
    elif args.command == "seed":
        print("loaded:", ", ".join(seed(settings)) or "nothing (demo tenants exist)")
    elif args.command == "token":
        if not settings.jwt_secret:
            local = settings.data_dir / "dev-jwt-secret"
            if not local.exists():
                print("JWT_SECRET is not set (and no .data/dev-jwt-secret from `make run`)", file=sys.stderr)
                return 2
            os.environ["JWT_SECRET"] = local.read_text().strip()
            get_settings.cache_clear()
            settings = get_settings()
        print(issue_token(settings, args.tenant, args.sub, args.scope or list(DEV_SCOPES), args.ttl))
    elif args.command == "dev":
        dev(args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
