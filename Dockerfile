# Production image: the API against an external PostgreSQL 14+, with two accounts (README, "Database roles"):
#   DATABASE_OWNER_URL  the owner role (consent_ledger_owner): `serve --migrate` migrates with it, then lets go
#   DATABASE_URL        the runtime role (consent_ledger_runtime): the API (and `consent-ledger worker`) serve with it
#   DB_RUNTIME_ROLE     the runtime role's name, if not consent_ledger_runtime (the migrations grant to it)
# Without DATABASE_OWNER_URL the migrations run with DATABASE_URL (one account for both; a warning is logged).
# With `serve --migrate` the owner's password sits in the API container's environment too; to keep it out, run one
# `consent-ledger migrate` job with only DATABASE_OWNER_URL, and the API with only DATABASE_URL and
# CMD ["consent-ledger", "serve", "--host", "0.0.0.0", "--port", "8000"].
# Keys kept outside the database (README, "Proof"): mount them read-only and point at them, e.g.
#   -v /secrets:/secrets:ro -e SIGNING_KEY_FILE=/secrets/signing-key.pem -e LEDGER_SECRET_FILE=/secrets/ledger-secret
#   -e CHECKPOINT_DIR=/checkpoints (a volume the database's administrators cannot write)
# The API refuses to start without them.
# Build stage: resolve and install dependencies into a virtualenv.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY app ./app
RUN /opt/venv/bin/pip install .

# Runtime stage: no build tools, a non-root user, migrations (owner) then the server (runtime role).
FROM python:3.11-slim AS runtime
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN groupadd --system ledger && useradd --system --gid ledger --home-dir /srv --shell /usr/sbin/nologin ledger
WORKDIR /srv
COPY --from=build /opt/venv /opt/venv
COPY alembic.ini ./
COPY alembic ./alembic
USER ledger
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"
CMD ["consent-ledger", "serve", "--migrate", "--host", "0.0.0.0", "--port", "8000"]
