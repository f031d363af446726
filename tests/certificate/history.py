"""A member's history worth a certificate: a sign-up on a wording carrying markup, a withdrawal, a
reconfirmation, a checkpoint, and optionally an act after it (not yet in a checkpoint)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.helpers import sign_up

HOSTILE = "<script>alert('certificate')</script> 이메일 광고 수신 <img src=x onerror=alert(1)>"
USER_AGENT = "CertificateTest/1.0 (raw evidence: never printed)"
CLIENT_IP = "203.0.113.7"  # the test client's address (tests/conftest.py)


async def build(client: httpx.AsyncClient, headers: dict[str, str], member: str, *, pause: float = 0.0,
                after_checkpoint: bool = False) -> dict[str, Any]:
    """Records the history; returns the member's events as the history route prints them."""
    purpose = (await client.get("/v1/purposes/marketing-email", headers=headers)).json()
    wording = {**purpose["disclosures"], "ko": {**purpose["disclosures"]["ko"], "purpose": HOSTILE}}
    patched = await client.patch("/v1/purposes/marketing-email", headers=headers, json={"disclosures": wording})
    assert patched.status_code == 200, patched.text
    agent = {**headers, "User-Agent": USER_AGENT}
    signed = await sign_up(client, agent, member, {"marketing", "marketing-sms", "marketing-email", "analytics"})
    assert signed.status_code == 201, signed.text
    await asyncio.sleep(pause)
    for path in (f"/v1/subjects/{member}/consents/marketing-sms/withdraw",
                 f"/v1/subjects/{member}/consents/marketing-email/reconfirm"):
        answer = await client.post(path, headers=agent)
        assert answer.status_code in (200, 201), answer.text
        await asyncio.sleep(pause)
    made = await client.post("/v1/audit/checkpoints", headers=headers)
    assert made.status_code in (200, 201), made.text
    if after_checkpoint:
        answer = await client.post(f"/v1/subjects/{member}/consents/analytics/withdraw", headers=agent)
        assert answer.status_code == 200, answer.text
    history = await client.get(f"/v1/subjects/{member}/consents/history?limit=500", headers=headers)
    assert history.status_code == 200, history.text
    return {"events": history.json()["items"], "checkpoint": made.json()}
