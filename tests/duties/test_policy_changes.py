"""Policy changes: announced 7 days ahead, 30 when unfavourable or material (e-commerce standard
terms Art. 3(4)); a material change of what was consented to needs fresh consent (PIPA Art. 15(2),
17(2))."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def notice(version: str, days: float, **extra) -> dict:
    return {"key": "privacy-policy", "version": version, "title": "개인정보 처리방침 (개정)", "body": f"본문 {version}",
            "effective_at": (datetime.now(UTC) + timedelta(days=days)).isoformat(), "publish": True, **extra}


async def test_standard_terms_3_4_a_change_is_announced_7_days_ahead_30_when_material_or_forced_with_a_reason(
        client, auth, demo):
    headers = auth(demo, "catalog:write", "catalog:read", sub="dpo")
    early = await client.post("/v1/notices", headers=headers, json=notice("v2", 6.9))
    assert early.status_code == 422 and early.json()["errors"][0]["field"] == "body.effective_at"
    assert (await client.post("/v1/notices", headers=headers, json=notice("v2", 7.01))).status_code == 201
    material = await client.post("/v1/notices", headers=headers, json=notice("v3", 20, impact="material"))
    assert material.status_code == 422 and "30 days" in material.json()["detail"]
    forced = await client.post("/v1/notices", headers=headers,
                               json=notice("v3", 1, impact="unfavourable", force_reason="a court order"))
    assert forced.status_code == 201, forced.text
    assert forced.json()["forced_reason"] == "a court order" and forced.json()["forced_by"] == "dpo"
    # a draft published later is held to the same rule
    draft = (await client.post("/v1/notices", headers=headers, json=notice("v4", 3, publish=False))).json()
    assert (await client.post(f"/v1/notices/{draft['id']}/publish", headers=headers)).status_code == 422
    published = await client.post(f"/v1/notices/{draft['id']}/publish", headers=headers,
                                  json={"force_reason": "security fix"})
    assert published.status_code == 200 and published.json()["forced_reason"] == "security fix"
