"""Request builders shared by the tests."""

from __future__ import annotations

from typing import Any

import httpx


async def form(client: httpx.AsyncClient, headers: dict[str, str], point: str = "signup") -> dict[str, Any]:
    response = await client.get(f"/v1/collection-points/{point}/form", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def decisions_for(form_body: dict[str, Any], granted: set[str] | None = None, *, all_granted: bool = False,
                  ) -> dict[str, Any]:
    """A complete, valid submission: required purposes granted, `granted` granted, the rest refused."""
    granted = granted or set()
    items = []
    for p in form_body["purposes"]:
        items.append({
            "purpose": p["key"],
            "decision": "granted" if all_granted or p["required"] or p["key"] in granted else "refused",
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
