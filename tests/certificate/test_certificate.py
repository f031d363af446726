"""Issue 11 point 6: a consent certificate for one member, its content, its escaping, its proofs,
who may have it (audit:read for any member of the tenant, `self` for oneself) and who may not."""

from __future__ import annotations

import base64
import hashlib
import html
import re
from html.parser import HTMLParser

import pytest
from joserfc import jws
from joserfc.jwk import KeySet

from app.certificate.style import CSS_HASH
from tests.certificate.history import CLIENT_IP, HOSTILE, USER_AGENT, build
from tests.helpers import sign_up

class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()
        self.attributes: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        self.seen.add(tag)
        self.attributes += [(name, value or "") for name, value in attrs]


pytestmark = pytest.mark.filterwarnings("ignore:EdDSA is deprecated")
DOCUMENTS = re.compile(r'<pre class="event-document">(.*?)</pre>', re.S)


def _fold(leaf: bytes, index: int, size: int, path: list[bytes]) -> bytes:
    """RFC 9162 2.1.3.2, written out here apart from the service's own code."""
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if fn & 1 or fn == sn:
            r = hashlib.sha256(b"\x01" + p + r).digest()
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = hashlib.sha256(b"\x01" + r + p).digest()
        fn, sn = fn >> 1, sn >> 1
    return r


async def test_the_certificate_shows_each_act_its_wording_evidence_hash_and_proof(client, auth, demo):
    operator = auth(demo)
    made = await build(client, operator, "cert-1", after_checkpoint=True)
    events, checkpoint = made["events"], made["checkpoint"]
    response = await client.get("/v1/subjects/cert-1/certificate", headers=auth(demo, "audit:read"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    page = response.text

    # self-contained and locked down: one stylesheet allowed by its hash, nothing else loads or runs
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'none'" in csp and "frame-ancestors 'none'" in csp
    style = re.search(r"<style>(.*?)</style>", page, re.S).group(1)
    assert base64.b64encode(hashlib.sha256(style.encode()).digest()).decode() == CSS_HASH
    assert f"'sha256-{CSS_HASH}'" in csp
    assert response.headers["cache-control"] == "no-store"
    tags = _Tags()
    tags.feed(page)
    assert not tags.seen & {"script", "link", "img", "iframe", "object", "embed", "base", "form", "meta refresh"}
    assert not [a for a in tags.attributes if a[0].startswith("on") or a[0] in ("src", "srcset", "style")]
    assert all(value.startswith("#") for name, value in tags.attributes if name == "href")
    assert "@import" not in style and not re.search(r"url\((?!#)", page)

    # the hostile wording prints as text, in the tables and in the chart's labels
    assert html.escape(HOSTILE) in page and "&lt;script&gt;alert(" in page

    # never the raw evidence
    assert CLIENT_IP not in page and "CertificateTest" not in page and USER_AGENT not in page

    # Korean and English; every purpose, act, hash, wording and notice
    for text in ("개인정보 동의 확인서", "Certificate of consent", "상태 타임라인", "Timeline", "확인 방법",
                 "How to check", "verify-bundle", "/.well-known/consent-ledger/jwks.json"):
        assert text in page, text
    assert {e["purpose"] for e in events} >= {"membership", "marketing-sms", "marketing-email", "analytics"}
    for event in events:
        assert f'id="p-{event["purpose"]}"' in page
        assert event["hash"] in page and event["evidence"]["commitment"] in page
        assert event["disclosure_hash"] is None or event["disclosure_hash"] in page
        assert event["notice"] is None or event["notice"]["sha256"] in page
    assert page.count('<g class="act"') == len(events)  # one mark per act in the chart
    assert "계약의 이행" in page and "PIPA Art. 15(1)4" in page  # membership's legal basis
    assert "재확인 reconfirmed" in page and "철회 withdrawn" in page

    # each document printed is exactly what its hash covers
    documents = [html.unescape(d) for d in DOCUMENTS.findall(page)]
    assert [hashlib.sha256(d.encode()).hexdigest() for d in documents] == [e["hash"] for e in events]

    # the checkpoint verifies with the published keys (an independent JOSE library) ...
    jwks = (await client.get("/.well-known/consent-ledger/jwks.json")).json()
    assert checkpoint["root_hash"] in page and html.escape(checkpoint["jws"]) in page
    signed = jws.deserialize_compact(checkpoint["jws"], KeySet.import_key_set(jwks), algorithms=["EdDSA"])
    assert checkpoint["root_hash"] in signed.payload.decode()
    # ... and each audit path printed folds the event's hash to its root; the act after it is pending
    root = bytes.fromhex(checkpoint["root_hash"])
    for event in events[:-1]:
        block = page[page.index(f'id="proof-{event["seq"]}"'):]
        block = block[:block.index("</div>", block.index("event-document"))]
        index = int(re.search(r"리프 leaf <b>([\d,]+)</b>", block).group(1).replace(",", ""))
        path = [bytes.fromhex(h) for h in re.findall(r'<li class="hash">([0-9a-f]{64})</li>', block)]
        leaf = hashlib.sha256(b"\x00" + bytes.fromhex(event["hash"])).digest()
        assert _fold(leaf, index, checkpoint["tree_size"], path) == root, event["seq"]
    assert "다음 체크포인트에 포함" in page  # the withdrawal recorded after the checkpoint
    assert "✓ 검증 통과" in page


async def test_scopes_tenants_and_unknown_members(client, auth, demo, new_tenant):
    operator = auth(demo)
    assert (await sign_up(client, operator, "cert-a", {"marketing"})).status_code == 201
    assert (await sign_up(client, operator, "cert-b", {"marketing-sms"})).status_code == 201
    b_hashes = [e["hash"] for e in (await client.get("/v1/subjects/cert-b/consents/history",
                                                     headers=operator)).json()["items"]]

    # the person: their own certificate, nothing of anybody else
    mine = await client.get("/v1/me/certificate", headers=auth(demo, "self", sub="cert-a"))
    assert mine.status_code == 200 and "cert-a" in mine.text
    assert "cert-b" not in mine.text and not any(h in mine.text for h in b_hashes)
    audited = await client.get("/v1/subjects/cert-a/certificate", headers=auth(demo, "audit:read"))
    hashes = re.compile(r'<td class="hash">([0-9a-f]{64})</td>')
    assert hashes.findall(mine.text) == hashes.findall(audited.text)  # the same facts either way
    assert "the person themself (PIPA Art. 35)" in mine.text and "Privacy officer (signature)" not in mine.text
    assert "an auditor's token" in html.unescape(audited.text) and "Privacy officer (signature)" in audited.text

    # unknown member, another tenant's member: 404 problem+json, the same answer
    for path, headers in (("/v1/subjects/nobody/certificate", auth(demo, "audit:read")),
                          ("/v1/subjects/cert-a/certificate", auth(await new_tenant(), "audit:read")),
                          ("/v1/me/certificate", auth(demo, "self", sub="nobody")),
                          ("/v1/me/certificate", auth(await new_tenant(), "self", sub="cert-a"))):
        answer = await client.get(path, headers=headers)
        assert answer.status_code == 404, (path, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["detail"].startswith("no subject")

    # scopes: audit:read for the operator route; a self token reaches only its own; none: 401
    for path, headers, status in (
            ("/v1/subjects/cert-a/certificate", auth(demo, "consents:read", "consents:write"), 403),
            ("/v1/subjects/cert-a/certificate", auth(demo, "self", sub="cert-a"), 403),
            ("/v1/me/certificate", auth(demo, "audit:read"), 403),
            ("/v1/subjects/cert-a/certificate", {}, 401)):
        answer = await client.get(path, headers=headers)
        assert answer.status_code == status, (path, answer.text)
    long_id = "x" * 256
    answer = await client.get(f"/v1/subjects/{long_id}/certificate", headers=auth(demo, "audit:read"))
    assert answer.status_code == 422 and answer.json()["errors"][0]["field"] == "path.subject_id"


async def test_a_rewritten_event_is_shown_as_a_break_not_as_verified(client, auth, demo, db):
    """A rogue DBA edits one event (triggers off): the certificate says the check failed, names the
    break at that act, and does not print the verified line."""
    operator = auth(demo)
    assert (await sign_up(client, operator, "cert-x", {"marketing"})).status_code == 201
    subject = await db.fetchrow("SELECT id FROM subjects WHERE tenant_id = $1 AND external_id = 'cert-x'", demo)
    async with db.transaction():
        await db.execute("SET LOCAL session_replication_role = replica")
        await db.execute("UPDATE consent_events SET method = 'paper' WHERE subject_id = $1 AND seq = 1", subject["id"])
    page = (await client.get("/v1/subjects/cert-x/certificate", headers=auth(demo, "audit:read"))).text
    assert "✗ 검증 실패" in page and "Check failed" in page and "✓ 검증 통과" not in page
    assert "<b>altered_event</b> #1" in page
    row = re.search(r'<tr><td><a href="#proof-1">#1</a>.*?</tr>', page, re.S).group(0)  # §5, the act's row
    assert '<span class="bad">altered_event' in row


async def test_a_history_too_long_for_paper_is_a_422_naming_the_member(client, auth, demo, monkeypatch):
    from app.certificate import gather

    assert (await sign_up(client, auth(demo), "cert-long", {"marketing"})).status_code == 201
    monkeypatch.setattr(gather, "MAX_EVENTS", 3)
    monkeypatch.setattr(gather, "PAGE", 2)
    answer = await client.get("/v1/subjects/cert-long/certificate", headers=auth(demo, "audit:read"))
    assert answer.status_code == 422 and answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["errors"] == [{"field": "path.subject_id", "reason": "more than 3 events"}]
