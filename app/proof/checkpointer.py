"""The worker's checkpointer: every CHECKPOINT_INTERVAL_SECONDS, a signed checkpoint for each tenant
whose log has grown (docs/proof.md), pushed as `ledger.checkpoint` webhooks and, with CHECKPOINT_DIR,
written to `<dir>/<tenant>/<tree_size>.json`.

Runs beside the webhook worker on a connection of its own, opened per round (as the purger does),
with DB_LOCK_TIMEOUT_SECONDS as its lock_timeout: a tenant whose log lock another session holds
(or any lock its checkpoint waits for) is skipped for the round, logged at WARNING, and the other
tenants proceed. Nothing here may end the worker: a failed round (the database away) is retried
after 2, 4, 8 ... seconds, never more than the interval; a tenant whose checkpoint fails (a log that
no longer extends what was signed, unsealed events or planted subtrees are logged at ERROR by
app/proof/log.py) is retried after one interval, then two, four ... up to an hour, while the other
tenants carry on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import asyncpg

from app.core.db import asyncpg_dsn
from app.core.errors import database_unavailable
from app.core.settings import Settings
from app.proof import log as proof_log
from app.proof.context import Proof

log = logging.getLogger("consent_ledger.proof")

MAX_TENANT_BACKOFF = 3600.0
# What app/proof/log.py refuses to sign (and logs at ERROR itself): a rewritten or planted log,
# events the service did not seal, a checkpoint row it did not sign in the way.
REFUSALS = (proof_log.LogInconsistent, proof_log.LogUnsealed, proof_log.CheckpointForged)

# Tenants with something to sign: events queued for the log, or log entries past the latest
# checkpoint. Per tenant, three index probes (queue by tenant, log and checkpoints by primary key).
# Only checkpoint rows within the log count: a row with a larger tree_size cannot be one the service
# signed (the runtime role may INSERT such rows; app/proof/log.py skips them) and must not make the
# tenant look done.
DUE = """
SELECT t.id FROM tenants t
CROSS JOIN LATERAL (SELECT max(l.idx) + 1 AS size FROM ledger_log l WHERE l.tenant_id = t.id) s
WHERE EXISTS (SELECT 1 FROM ledger_log_queue q WHERE q.tenant_id = t.id)
   OR s.size > coalesce((SELECT max(c.tree_size) FROM ledger_checkpoints c
                         WHERE c.tenant_id = t.id AND c.tree_size <= s.size), 0)
ORDER BY t.id
"""


class Checkpointer:
    def __init__(self, settings: Settings, proof: Proof) -> None:
        self.settings = settings
        self.proof = proof
        self._failures: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}

    async def round(self) -> list[dict[str, Any]]:
        """Checkpoint every tenant that needs one (except those backing off); returns the checkpoints
        made. Raises only when the database cannot be reached or is lost mid-round."""
        # lock_timeout for this round's connection: one session holding a tenant's log lock (or a
        # row a checkpoint inserts) must not stall every tenant's checkpoint.
        conn = await asyncpg.connect(
            asyncpg_dsn(self.settings.database_url), timeout=self.settings.db_connect_timeout_seconds,
            server_settings={"application_name": "consent-ledger-checkpointer", "timezone": "UTC",
                             "lock_timeout": f"{max(int(self.settings.db_lock_timeout_seconds * 1000), 1)}ms"})
        made = []
        try:
            for tenant in [r["id"] for r in await conn.fetch(DUE)]:
                if self._retry_at.get(tenant, 0.0) > time.monotonic():
                    continue
                try:
                    checkpoint = await proof_log.make_checkpoint(
                        conn, tenant, self.proof, checkpoint_dir=self.settings.checkpoint_dir)
                except asyncpg.LockNotAvailableError as exc:  # not a failure of the tenant: next round
                    log.warning("checkpoint of tenant %r skipped this round: a lock it needs (its log lock) is held "
                                "by another session past lock_timeout (%s s): %s", tenant,
                                self.settings.db_lock_timeout_seconds, exc)
                    continue
                except Exception as exc:  # noqa: BLE001 - one tenant's failure is not the others'
                    if database_unavailable(exc) or conn.is_closed():
                        raise
                    self._back_off(tenant, exc)
                    continue
                self._failures.pop(tenant, None)
                self._retry_at.pop(tenant, None)
                if checkpoint is not None:
                    made.append(checkpoint)
                    log.info("checkpoint %d of tenant %r signed (root %s)", checkpoint["tree_size"], tenant,
                             checkpoint["root_hash"])
        finally:
            await conn.close()
        return made

    def _back_off(self, tenant: str, exc: Exception) -> None:
        failures = self._failures[tenant] = self._failures.get(tenant, 0) + 1
        interval = max(self.settings.checkpoint_interval_seconds, 1.0)
        wait = min(interval * 2 ** (failures - 1), max(interval, MAX_TENANT_BACKOFF))
        self._retry_at[tenant] = time.monotonic() + wait
        if not isinstance(exc, REFUSALS):  # those are logged at ERROR, with what and why, where they are found
            log.error("checkpoint of tenant %r failed (%s: %s); retrying in %.0f s", tenant,
                      type(exc).__name__, exc, wait, exc_info=exc)
        else:
            log.error("no checkpoint for tenant %r until what its log holds can be signed (%s); checking again "
                      "in %.0f s", tenant, exc.slug, wait)


async def run_checkpointer(settings: Settings, stop: asyncio.Event, proof: Proof) -> None:
    """Checkpoint every CHECKPOINT_INTERVAL_SECONDS until `stop` is set."""
    checkpointer = Checkpointer(settings, proof)
    failures = 0
    while not stop.is_set():
        delay = settings.checkpoint_interval_seconds
        try:
            await checkpointer.round()
            failures = 0
        except Exception as exc:  # noqa: BLE001 - the loop must outlive outages
            failures += 1
            delay = min(delay, 2.0 ** failures)
            log.warning("checkpoint round failed, retrying in %.0f s: %s: %s", delay, type(exc).__name__, exc)
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except TimeoutError:
            pass
