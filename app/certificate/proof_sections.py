"""The certificate's proof: each event's evidence and hash, the checkpoint, how to check, and the
appendix with every event's hashed document and inclusion proof (docs/certificate.md)."""

from __future__ import annotations

from datetime import datetime
from html import escape

from app.certificate.gather import Act, Certificate
from app.certificate.labels import ACTOR, METHOD, heading, kst, pair, th
from app.core.hashing import canonical_json

SEAL = {
    "sealed": '<span class="ok">✓ 봉인 sealed</span>',
    "unsealed": '<span class="bad">✗ 봉인 불일치 not the service\'s seal</span>',
    "legacy": '<span class="pending">v1 (봉인 도입 전 before seals)</span>',
}


def _included(c: Certificate, act: Act) -> str:
    if act.inclusion is None:
        return '<span class="pending">다음 체크포인트에 포함 · enters the next checkpoint</span>'
    mark = '<span class="ok">✓</span>' if act.included else '<span class="bad">✗ 루트와 불일치 does not reach the root</span>'
    return f'{mark} 리프 leaf {act.inclusion["leaf_index"]:,} / {act.inclusion["tree_size"]:,}'


def _evidence(c: Certificate) -> str:
    rows = []
    for act in c.acts_in_order:
        event = act.event
        commitment = (event["evidence"] or {}).get("commitment")
        broken = f'<br><span class="bad">{escape(", ".join(act.breaks))}</span>' if act.breaks else ""
        rows.append(
            f'<tr><td><a href="#proof-{event["seq"]}">#{event["seq"]}</a><br><span class="mono">'
            f'{escape(event["purpose"])}</span></td>'
            f'<td>{pair(METHOD, event["method"])}<br>{pair(ACTOR, event["actor"]["type"])}<br>'
            f'{escape(event["collection_point"] or "—")}</td>'
            f'<td class="hash">{escape(commitment) if commitment else "—"}</td>'
            f'<td class="hash">{escape(event["hash"])}</td>'
            f'<td>{SEAL[act.seal]}{broken}<br>{_included(c, act)}</td></tr>')
    return (heading("5", "증거와 해시", "Evidence and hashes", "evidence")
            + "<p>IP 주소·사용자 에이전트 같은 원본 증거는 원장 밖에 따로 보관되며(보유 기간이 지나면 파기) 이 확인서에 "
              "싣지 않습니다. 이벤트는 그 증거의 커밋먼트(서비스의 비밀 키로 만든 해시)만 가지므로, 원본이 남아 있는 "
              "동안 개인정보처리자는 그것이 이 행위의 증거임을 보일 수 있습니다. 봉인은 이벤트 해시에 대한 서비스의 "
              "키 서명(HMAC)으로, 데이터베이스 관리자가 만든 행이 아님을 보입니다. "
              '<span class="en-text">Raw evidence (IP address, user agent) is kept apart from the ledger, destroyed '
              "when its retention ends, and never printed here: the event carries only its commitment (a keyed "
              "hash), with which the controller can show, while the raw data exists, that it is this act's. The "
              "seal is the service's keyed MAC of the event hash: the row was written by the service, not by "
              "whoever administers the database.</span></p>"
            + f"<table class=\"evidence\"><thead><tr>{th('#', 'seq')}{th('방법 · 주체 · 경로', 'Method · actor · point')}"
              f"{th('증거 커밋먼트', 'Evidence commitment')}{th('이벤트 해시 (SHA-256)', 'Event hash')}"
              f"{th('봉인 · 로그', 'Seal · log')}</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _checkpoint(c: Certificate) -> str:
    cp = c.checkpoint
    head = heading("6", "체크포인트", "Checkpoint", "checkpoint")
    if cp is None:
        return head + ('<p class="pending">이 개인정보처리자의 원장에는 아직 서명된 체크포인트가 없습니다. 이벤트는 다음 '
                       "체크포인트에 들어갑니다. · No signed checkpoint of this controller's ledger yet: the events "
                       "enter the next one.</p>")
    return head + f"""<p>개인정보처리자의 모든 이벤트를 담는 Merkle 로그(RFC 9162)의 서명된 트리 헤드입니다. 서비스는 이를
주기적으로 외부에 내보내므로, 나중에 과거 기록을 고치면 이미 나간 체크포인트와 맞지 않게 됩니다.
<span class="en-text">The signed tree head of the Merkle log (RFC 9162) that holds every event of the controller; the
service hands checkpoints out as it makes them, so a later rewrite of history no longer matches those already
out.</span></p>
<table class="facts">
<tr><th>트리 크기 <span class="en">Tree size</span></th><td>{cp["tree_size"]:,}</td></tr>
<tr><th>루트 해시 <span class="en">Root hash</span></th><td class="hash" id="checkpoint-root">{escape(cp["root_hash"])}</td></tr>
<tr><th>서명 시각 <span class="en">Signed at</span></th><td>{kst(datetime.fromisoformat(cp["issued_at"].replace("Z", "+00:00")))} <span class="en-text">({escape(cp["issued_at"])})</span></td></tr>
<tr><th>서명 키 <span class="en">Key id (kid)</span></th><td class="hash">{escape(cp["key_id"])}</td></tr>
<tr><th>공개 키 <span class="en">Public keys (JWKS)</span></th><td class="hash">{escape(c.jwks_url)}</td></tr>
</table>
<p>서명(compact JWS, EdDSA, <span class="mono">typ consent-ledger-checkpoint+jwt</span>) · <span class="en-text">Signature</span></p>
<pre id="checkpoint-jws">{escape(cp["jws"])}</pre>"""


def _how(c: Certificate) -> str:
    jwks = escape(c.jwks_url)
    return heading("7", "확인 방법", "How to check", "how") + f"""
<p>이 확인서는 서비스를 믿지 않고도 확인할 수 있습니다. 필요한 것은 SHA-256과 Ed25519 서명 검증뿐입니다.</p>
<ol class="steps">
<li>공개 키 <span class="hash">{jwks}</span>로 §6의 JWS를 검증합니다(알고리즘 EdDSA). 서명된 내용의
<span class="mono">tree_size</span>와 <span class="mono">root_hash</span>가 §6과 같아야 합니다.</li>
<li>부록 A의 각 이벤트 문서(RFC 8785 정규형 JSON)를 UTF-8로 SHA-256하면 그 이벤트 해시가 나옵니다.
§4의 고지 내용 해시는 SHA-256(RFC 8785(고지 내용 JSON)), 고지문 해시는 SHA-256(본문 UTF-8)입니다.</li>
<li>리프 해시 = SHA-256(0x00 ‖ 이벤트 해시 32바이트). 이를 감사 경로의 해시와 차례로 결합하면
(RFC 9162 §2.1.3.2, 내부 노드 = SHA-256(0x01 ‖ 왼쪽 ‖ 오른쪽)) §6의 루트 해시가 되어야 합니다.</li>
<li>개인정보처리자 전체 원장을 검증하려면 감사 번들을 받아
<span class="mono">consent-ledger verify-bundle bundle.zip --public-key jwks.json --trusted-checkpoint checkpoint.jws</span>
를 실행합니다(§6의 JWS를 checkpoint.jws로 저장; 종료 코드 0 = 유효). 더 나중의 체크포인트가 이 체크포인트를
이어받는지는 일관성 증명(<span class="mono">/v1/audit/proofs/consistency</span>)으로 확인합니다.</li>
</ol>
<p class="en-text">Anyone can check this certificate without trusting the service, with SHA-256 and an Ed25519
signature check: (1) verify the JWS of §6 with the public keys at {jwks} (EdDSA); the signed
<span class="mono">tree_size</span> and <span class="mono">root_hash</span> must be those printed. (2) The SHA-256 of
each event document in Appendix A (RFC 8785 JSON, UTF-8) is its event hash; a wording's hash in §4 is the
SHA-256 of its RFC 8785 form, a notice's the SHA-256 of its text. (3) The leaf hash is SHA-256(0x00 ‖ the 32 bytes
of the event hash); folded with the audit path (RFC 9162 §2.1.3.2, node = SHA-256(0x01 ‖ left ‖ right)) it must
give the root of §6. (4) To check the controller's whole ledger, ask for its audit bundle and run
<span class="mono">consent-ledger verify-bundle bundle.zip --public-key jwks.json --trusted-checkpoint checkpoint.jws</span>
with the JWS of §6 saved as checkpoint.jws (exit status 0: valid); a consistency proof
(<span class="mono">/v1/audit/proofs/consistency</span>) shows that a later checkpoint extends this one.</p>"""


def _appendix(c: Certificate) -> str:
    out = [heading("A", "부록: 이벤트 문서와 포함 증명", "Appendix: event documents and inclusion proofs",
                    "appendix", "appendix")]
    for act in c.acts_in_order:
        event = act.event
        if act.inclusion is not None:
            path = "".join(f'<li class="hash">{escape(h)}</li>' for h in act.inclusion["audit_path"])
            proof = (f'<div>리프 leaf <b>{act.inclusion["leaf_index"]:,}</b> · 리프 해시 leaf hash '
                     f'<span class="hash">{escape(act.inclusion["leaf_hash"])}</span></div>'
                     f'<div>감사 경로 audit path ({len(act.inclusion["audit_path"])}):</div>'
                     f'<ol>{path or "<li>— (단일 리프 single leaf)</li>"}</ol>')
        else:
            proof = '<div class="pending">아직 체크포인트에 없음 · not in a checkpoint yet</div>'
        legacy = ('<div class="pending">체인 버전 1: 해시는 감사 번들의 legacy 페이로드를 덮습니다 · chain version 1: '
                  "the hash covers the legacy payload in the audit bundle</div>" if event["chain_version"] == 1 else "")
        out.append(f'<div class="proof" id="proof-{event["seq"]}"><b>#{event["seq"]}</b> '
                   f'<span class="mono">{escape(event["purpose"])}</span> · {kst(act.recorded_at)} · '
                   f'이벤트 해시 event hash <span class="hash">{escape(event["hash"])}</span>'
                   f'{proof}{legacy}<pre class="event-document">{escape(act.canonical)}</pre></div>')
    if c.disclosures:
        out.append('<h3>고지 내용 원문 <span class="en">Wording as hashed (RFC 8785)</span></h3>')
        for (purpose, digest), content in sorted(c.disclosures.items()):
            out.append(f'<div class="proof"><span class="mono">{escape(purpose)}</span> · '
                       f'<span class="hash">{escape(digest)}</span>'
                       f'<pre>{escape(canonical_json(content).decode("utf-8"))}</pre></div>')
    return "".join(out)


def _sign_off(c: Certificate) -> str:
    """For the paper an officer hands over: where they sign (not on the person's own copy)."""
    if c.requested_by is None:
        return ""
    return ('<div class="sign"><div>개인정보 보호책임자 확인 (서명) · Privacy officer (signature)</div>'
            "<div>제출일 · Date submitted</div></div>")


def render(c: Certificate) -> str:
    return "".join((_evidence(c), _checkpoint(c), _how(c), _sign_off(c), _appendix(c),
                    '<footer class="doc">consent-ledger · 이 문서는 서명된 원장에서 자동으로 만들어졌으며 '
                    "스크립트나 외부 자원을 쓰지 않습니다. · Generated from the signed ledger; it runs no script "
                    "and loads nothing from elsewhere.</footer>"))
