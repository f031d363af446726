"""Issue 11 point 7 (PIPA Art. 35, 37): the person's own view, with a token of scope `self` whose
`sub` is their member id: their state with the wording and legal basis, their history and
receipts, a withdrawal as easy as the grant, and nothing of anybody else."""

from __future__ import annotations

from tests.helpers import sign_up


async def test_pipa_35_the_person_sees_their_own_consents_and_nothing_of_anybody_else(client, auth, demo, new_tenant):
    operator = auth(demo, "consents:write", "consents:read")
    assert (await sign_up(client, operator, "me-1", {"marketing", "marketing-sms"})).status_code == 201
    assert (await sign_up(client, operator, "me-2", {"marketing-email"})).status_code == 201
    me = auth(demo, "self", sub="me-1")

    mine = (await client.get("/v1/me/consents", headers=me)).json()
    theirs = (await client.get("/v1/subjects/me-1/consents", headers=operator)).json()
    assert mine["subject_id"] == "me-1"
    strip = ("legal_basis", "category", "wording")
    assert [{k: v for k, v in c.items() if k not in strip} for c in mine["consents"]] == theirs["consents"]
    by = {c["purpose"]: c for c in mine["consents"]}
    assert by["marketing-sms"]["status"] == "granted" and by["marketing-sms"]["legal_basis"] == "consent"
    assert by["membership"]["legal_basis"] == "contract" and by["membership"]["status"] == "acknowledged"
    assert by["marketing-sms"]["wording"]["content"]["ko"]["purpose"]  # the text shown, not just its hash
    assert by["marketing-email"]["status"] == "refused"  # me-2 granted it; me-1 did not

    history = (await client.get("/v1/me/history", headers=me)).json()
    assert history == (await client.get("/v1/subjects/me-1/consents/history", headers=operator)).json()
    assert {e["subject_id"] for e in history["items"]} == {"me-1"}
    receipts = (await client.get("/v1/me/receipts", headers=me)).json()
    assert receipts["subject_id"] == "me-1" and len(receipts["items"]) == 1

    # withdrawing takes one call, and the operator sees the same
    withdrawn = await client.post("/v1/me/consents/marketing-sms/withdraw", headers=me)
    assert withdrawn.status_code == 200 and withdrawn.json()["results"][0]["status"] == "withdrawn"
    assert withdrawn.json()["results"][0]["event"]["actor"]["type"] == "subject"
    state = (await client.get("/v1/subjects/me-1/consents", headers=operator)).json()
    assert {c["purpose"]: c["status"] for c in state["consents"]}["marketing-sms"] == "withdrawn"
    assert len((await client.get("/v1/me/receipts", headers=me)).json()["items"]) == 2
    me2 = {c["purpose"]: c["status"] for c in (await client.get("/v1/me/consents", headers=auth(
        demo, "self", sub="me-2"))).json()["consents"]}
    assert me2["marketing-email"] == "granted" and me2["marketing-sms"] == "refused"  # untouched

    # a self token reaches nothing else: not the operator routes, not another tenant's member
    for path in ("/v1/subjects/me-2/consents", "/v1/subjects/me-1/consents/history", "/v1/duties"):
        assert (await client.get(path, headers=me)).status_code == 403
    assert (await client.post("/v1/subjects/me-2/consents/marketing-email/withdraw", headers=me)).status_code == 403
    other = auth(await new_tenant(), "self", sub="me-1")
    assert (await client.get("/v1/me/consents", headers=other)).status_code == 404
    # the person acts themself here
    operator_body = {"actor": {"type": "operator"}}
    assert (await client.post("/v1/me/consents/marketing/withdraw", headers=me, json=operator_body)
            ).status_code == 422
    # an operator's token is not the person's
    assert (await client.get("/v1/me/consents", headers=operator)).status_code == 403
