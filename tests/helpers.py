"""Request builders shared by the tests."""

from __future__ import annotations

import uuid
from typing import Any

import httpx


async def form(client: httpx.AsyncClient, headers: dict[str, str], point: str = "signup") -> dict[str, Any]:
    response = await client.get(f"/v1/collection-points/{point}/form", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def decisions_for(form_body: dict[str, Any], granted: set[str] | None = None, *, all_granted: bool = False,
                  ) -> dict[str, Any]:
    """A complete, valid submission: purposes without consent acknowledged, required purposes
    granted, `granted` granted, the rest refused."""
    granted = granted or set()
    items = []
    for p in form_body["purposes"]:
        if not p.get("checkbox", True):
            decision = "acknowledged"
        else:
            decision = "granted" if all_granted or p["required"] or p["key"] in granted else "refused"
        items.append({
            "purpose": p["key"],
            "decision": decision,
            "disclosure_hash": p["disclosure_hash"],  # what the form showed, echoed for every decision
        })
    return {"collection_point": form_body["collection_point"], "notice_id": form_body["notice"]["id"],
            "decisions": items}


async def sign_up(client: httpx.AsyncClient, headers: dict[str, str], subject: str,
                  granted: set[str] | None = None, **extra: Any) -> httpx.Response:
    body = decisions_for(await form(client, headers), granted)
    body.update(extra)
    return await client.post(f"/v1/subjects/{subject}/consents", json=body, headers=headers)


async def event_count(db, tenant: str, subject: str) -> int:
    """Events stored for a subject, read straight from the database."""
    return await db.fetchval(
        "SELECT count(*) FROM consent_events e JOIN subjects s ON s.id = e.subject_id "
        "WHERE s.tenant_id = $1 AND s.external_id = $2", tenant, subject)


async def leaf_count(db, tenant: str) -> int:
    """The leaves a tenant's Merkle log must hold once its queue is drained: its events and its
    duty records (both are leaves: docs/duties.md), read from the ledger's tables, not the log."""
    return await db.fetchval(
        "SELECT (SELECT count(*) FROM consent_events WHERE tenant_id = $1)"
        " + (SELECT count(*) FROM duty_records WHERE tenant_id = $1)", tenant)


async def leaf_hashes(db, tenant: str) -> dict:
    """id -> hash of every event and duty record of a tenant (the leaf data of the log)."""
    return {r["id"]: r["hash"] for r in await db.fetch(
        "SELECT id, hash FROM consent_events WHERE tenant_id = $1"
        " UNION ALL SELECT id, hash FROM duty_records WHERE tenant_id = $1", tenant)}


# --- forging events, as an attacker with a database account would --------------------------------

async def last_event(db, tenant: str, member: str) -> dict:
    return dict(await db.fetchrow(
        "SELECT e.* FROM consent_events e JOIN subjects s ON s.id = e.subject_id "
        "WHERE s.tenant_id = $1 AND s.external_id = $2 ORDER BY e.seq DESC LIMIT 1", tenant, member))


def next_event(event: dict, tenant: str, member: str, **changes) -> dict:
    """The next event of the member's chain (a grant), correctly hashed and linked; the seal is
    whatever `event` or `changes` carry: only the service can make a real one."""
    from app.consents import chain

    forged = {**event, "id": uuid.uuid4(), "seq": event["seq"] + 1, "prev_hash": event["hash"],
              "action": "granted", "status": "granted", "previous_status": event["status"],
              "version": event["version"] + 1, **changes}
    forged["hash"] = chain.document_hash(chain.document(forged, tenant=tenant, subject_ref=member))
    return forged


def insert_event_sql(event: dict) -> tuple[str, list]:
    columns = list(event)
    return (f"INSERT INTO consent_events ({', '.join(columns)}) VALUES "
            f"({', '.join(f'${i + 1}' for i in range(len(columns)))})", list(event.values()))


async def insert_event(conn, event: dict) -> None:
    sql, values = insert_event_sql(event)
    await conn.execute(sql, *values)
