"""The auditors' benchmarks against a seeded database kept in a directory, so the ~37 minutes of
seeding 10 million events are paid once and the search, export and verification can be measured
again after a change (bench/README.md "Issue 11").

    python -m bench.kept seed DIR [EVENTS]     embedded PostgreSQL in DIR/pg, seeded (10,000,000 by default)
    python -m bench.kept audit DIR             search and export, as `make bench` runs them after seeding
    python -m bench.kept stop DIR              stop DIR's PostgreSQL

`make bench` itself never uses this: it seeds a fresh database every run. DIR holds the cluster,
the proof keys and state.pickle (the database's name and the seeded catalog); passwords are set
fresh on every call.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import secrets
import sys
import time
from pathlib import Path

from app.auth.tokens import issue
from app.core import roles
from app.core.embedded_pg import EmbeddedPostgres, free_port
from app.core.settings import Settings
from app.proof import keys
from bench import big, database, servers
from bench.run import PROJECT_TENANT
from bench.run import audit as run_audit
from bench.seed import seed_parallel


def server(directory: Path) -> EmbeddedPostgres:
    port_file = directory / "port"
    if not port_file.exists():
        port_file.write_text(str(free_port()))
    return EmbeddedPostgres(directory / "pg", int(port_file.read_text()), fast_unsafe=True).start()


def login(pg: EmbeddedPostgres, name: str) -> tuple[str, str]:
    """(superuser URL, runtime URL) on database `name`, with fresh role passwords."""
    passwords = {role: secrets.token_hex(16) for role in (roles.OWNER_ROLE, roles.RUNTIME_ROLE)}
    asyncio.run(roles.ensure(database.dsn(pg.url), name, passwords))
    url = pg.url.rsplit("/", 1)[0] + f"/{name}"
    return url, roles.with_login(pg.url, roles.RUNTIME_ROLE, passwords[roles.RUNTIME_ROLE], name)


def seed(directory: Path, events: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    pg = server(directory)
    url = database.create(pg.url)
    secret = keys.load_secret(Path(servers.proof_keys(directory)["LEDGER_SECRET_FILE"]), None)
    catalog = asyncio.run(database.load_catalog(url, PROJECT_TENANT))
    subjects = events // big.EVENTS_PER_SUBJECT
    started = time.perf_counter()
    seed_parallel(database.dsn(url), catalog, big.PREFIX, subjects, big.EVENTS_PER_SUBJECT, os.cpu_count() or 2,
                  secret)
    print(f"seeded {subjects * big.EVENTS_PER_SUBJECT:,} events in {time.perf_counter() - started:.0f} s", flush=True)
    stats = asyncio.run(big._vacuum_and_count(database.dsn(url)))
    print(f"consent_events holds {stats['events']:,} rows, database {stats['size'] / 2**30:.1f} GiB", flush=True)
    (directory / "state.pickle").write_bytes(pickle.dumps({"database": url.rsplit("/", 1)[1], "catalog": catalog,
                                                           "subjects": subjects}))


def audit(directory: Path) -> None:
    state = pickle.loads((directory / "state.pickle").read_bytes())
    pg = server(directory)
    url, runtime = login(pg, state["database"])
    database.RUNTIME_URLS[url] = runtime
    settings = Settings(database_url=url, jwt_secret=secrets.token_urlsafe(32), jwt_issuer="consent-ledger-bench",
                        jwt_audience="consent-ledger")
    token = issue(settings, tenant=PROJECT_TENANT, sub="bench", scopes=["audit:read"], ttl_seconds=4 * 3600)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    env = {"DATABASE_URL": url, "JWT_SECRET": settings.jwt_secret, "JWT_ISSUER": settings.jwt_issuer,
           "JWT_AUDIENCE": settings.jwt_audience, **servers.proof_keys(directory)}
    project = servers.start("project", "app.main:create_app", free_port(), env, directory)
    try:
        run_audit(database.dsn(url), state["catalog"], project, headers, state["subjects"],
                  search=os.environ.get("BENCH_SKIP_SEARCH") != "1", export=os.environ.get("BENCH_SKIP_EXPORT") != "1")
    finally:
        project.stop()


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("seed", "audit", "stop"):
        print(__doc__, file=sys.stderr)
        return 2
    directory = Path(argv[1]).resolve()
    if argv[0] == "seed":
        seed(directory, int(argv[2]) if len(argv) > 2 else 10_000_000)
    elif argv[0] == "audit":
        audit(directory)
    else:
        server(directory).stop("fast")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
