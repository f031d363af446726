"""The certificate as one self-contained HTML document (Korean first, English beside it).

Every value from the ledger or the catalog passes through `html.escape` on its way in: a purpose's
wording, a notice title or a member id holding markup prints as text. The proof sections (evidence,
checkpoint, how to check, the appendix) are in proof_sections.py.
"""

from __future__ import annotations

from html import escape
from typing import Any

from app.catalog import legal
from app.certificate import proof_sections
from app.certificate.chart import timeline
from app.certificate.gather import Act, Certificate, PurposeLine
from app.certificate.labels import ACTION, ACTOR, METHOD, STATUS, basis, heading, kst, pair, th
from app.certificate.style import CSS
from app.consents.chain import format_time


def short(value: str | None, n: int = 12) -> str:
    """A hash's first characters, with the whole in the tooltip (the full value is printed in §5)."""
    if not value:
        return "—"
    return f'<span class="short" title="{escape(value)}">{escape(value[:n])}…</span>'


def status_badge(status: str) -> str:
    ko, en = STATUS[status][:2] if status in STATUS else (status, status)
    return f'<span class="status s-{escape(status)}">{escape(ko)} {escape(en)}</span>'


def _header(c: Certificate) -> str:
    checked = c.verification
    controller = escape(c.controller) + (f' <span class="en-text">{escape(c.controller_en)}</span>'
                                         if c.controller_en else "")
    if c.checkpoint:
        anchor = (f'트리 크기 tree size {c.checkpoint["tree_size"]:,} · 루트 root '
                  f'<span class="hash">{escape(c.checkpoint["root_hash"])}</span>')
    else:
        anchor = '<span class="pending">아직 없음 · none yet (the events enter the next checkpoint)</span>'
    if checked["valid"]:
        verdict = (f'<div class="verdict"><span class="ok">✓ 검증 통과</span> · <span class="ok">Verified</span> — '
                   f'발급 시점에 이 회원의 이벤트 {checked["events_checked"]}건 전부(해시 체인, 봉인, 현재 상태, '
                   f'인용된 고지문·고지 내용, 증거 커밋먼트, Merkle 로그)를 다시 계산해 이상이 없었습니다. '
                   f'<span class="en-text">At issue, all {checked["events_checked"]} events of this member were '
                   f'recomputed (hash chain, seals, current state, cited texts, evidence commitments, Merkle log) '
                   f'and nothing was found altered.</span></div>')
    else:
        items = "".join(f'<li><b>{escape(b["kind"])}</b> #{escape(str(b["seq"]))} '
                        f'{escape(b["purpose"] or "")}: {escape(b["detail"])}</li>' for b in checked["breaks"])
        verdict = (f'<div class="verdict broken"><span class="bad">✗ 검증 실패 · Check failed</span> — '
                   f'이 기록에서 변경 흔적 {len(checked["breaks"])}건이 발견되었습니다. '
                   f'<span class="en-text">The check found {len(checked["breaks"])} break(s) in this record:'
                   f'</span><ul>{items}</ul></div>')
    requester = ('정보주체 본인 (개인정보 보호법 제35조) <span class="en-text">the person themself (PIPA Art. 35)</span>'
                 if c.requested_by is None else
                 f'감사 권한 <span class="mono">audit:read</span> · <span class="mono">{escape(c.requested_by)}</span> '
                 '<span class="en-text">an auditor\'s token</span>')
    return f"""<header class="doc">
<div class="kicker">{controller}</div>
<h1>개인정보 동의 확인서<span class="en">Certificate of consent</span></h1>
<table class="facts">
<tr><th>정보주체(회원 ID) <span class="en">Data subject (member id)</span></th><td class="mono">{escape(c.member)}</td></tr>
<tr><th>개인정보처리자 <span class="en">Controller</span></th><td>{controller} · <span class="mono">{escape(c.tenant)}</span></td></tr>
<tr><th>발급 요청 <span class="en">Requested by</span></th><td>{requester}</td></tr>
<tr><th>발급 시각 <span class="en">Issued</span></th><td>{kst(c.issued_at)} <span class="en-text">({escape(format_time(c.issued_at) or "")})</span></td></tr>
<tr><th>근거 체크포인트 <span class="en">Checkpoint</span></th><td>{anchor}</td></tr>
<tr><th>기록 <span class="en">Record</span></th><td>항목 {len(c.purposes)}개, 행위 {len(c.acts_in_order)}건 · {len(c.purposes)} purposes, {len(c.acts_in_order)} acts</td></tr>
</table>
{verdict}
<p>이 확인서는 위 회원이 각 항목에 대해 언제, 어떤 고지 내용을 보고, 어떤 방법으로 동의·거부·철회했는지를
변경할 수 없는 원장에서 그대로 옮긴 것입니다(개인정보 보호법 제35조 열람, 제22조 동의 방법, 제37조 철회).
끝의 해시와 서명으로 누구나 서비스를 믿지 않고 확인할 수 있습니다.
<span class="en-text">This certificate copies from a tamper-evident ledger when, on which wording and how the member
above granted, refused or withdrew each purpose (PIPA Art. 35 access, Art. 22 manner of consent, Art. 37
withdrawal). The hashes and signatures at the end let anyone check it without trusting the service.</span></p>
</header>"""


def _section_title(line: PurposeLine) -> str:
    ko, en = legal.SECTION_TITLES.get(line.section, (line.section, line.section))
    return f'{escape(ko)}<br><span class="en-text">{escape(en)}</span>'


def _purpose_name(line: PurposeLine) -> str:
    out = f'<b class="mono">{escape(line.key)}</b>'
    if line.title_ko:
        out += f"<br>{escape(line.title_ko)}"
    if line.title_en:
        out += f'<br><span class="en-text small">{escape(line.title_en)}</span>'
    return out


def _summary(c: Certificate) -> str:
    rows = "".join(
        f"<tr><td>{_purpose_name(p)}</td><td>{basis(p.legal_basis)}<br>"
        f'<span class="article">{_section_title(p)}</span></td>'
        f"<td>{status_badge(p.status)}</td><td>{kst(p.acts[-1].recorded_at).replace(' ', '<br>', 1)}</td>"
        f'<td class="num">{len(p.acts)}</td></tr>'
        for p in c.purposes)
    return (heading("1", "현재 상태", "State at issue", "state")
            + f'<table class="summary"><thead><tr>{th("항목", "Purpose")}{th("법적 근거 · 구분", "Legal basis · section")}'
              f"{th('상태', 'Status')}{th('시점', 'Since')}{th('행위', 'Acts')}</tr></thead>"
              f"<tbody>{rows}</tbody></table>")


def _chart(c: Certificate) -> str:
    return (heading("2", "상태 타임라인", "Timeline", "timeline")
            + f"<figure>{timeline(c.purposes, c.issued_at)}"
              "<figcaption>항목마다 한 줄: 색은 그 기간의 상태, 표시는 행위 하나(숫자는 이벤트 순번 #, 아래 표와 같음). "
              "빗금은 처리하지 않는 상태. 시각은 한국 표준시. "
              '<span class="en-text">One band per purpose: the colour is the status over that stretch, each mark '
              "one act (its number is the event's # in the tables below); hatched: no processing. Times in "
              "KST.</span></figcaption></figure>")


def _notice(event: dict[str, Any]) -> str:
    """Key and version (the title and whole hash are in §4's notice table)."""
    notice = event["notice"]
    if not notice:
        return "—"
    return (f'<span class="mono">{escape(notice["key"])}</span><br><span class="nowrap">v{escape(notice["version"])}'
            f"</span><br>{short(notice['sha256'])}")


def _where(c: Certificate, event: dict[str, Any]) -> str:
    point = event["collection_point"]
    name = (c.points.get(point) or {}).get("name") if point else None
    where = (f'{escape(name)} <span class="mono">({escape(point)})</span>' if name else escape(point)) \
        if point else "—"
    return (f"{where}<br>{pair(METHOD, event['method'])} · {pair(ACTOR, event['actor']['type'])}")


def _act_row(c: Certificate, act: Act) -> str:
    event = act.event
    wording = "—"
    if event["disclosure_hash"]:
        wording = f'<a href="#d-{escape(event["purpose"])}-{escape(event["disclosure_hash"][:16])}">' \
                  f'{short(event["disclosure_hash"])}</a>'
    act_cell = status_badge(event["status"])
    if event["action"] != event["status"]:  # e.g. a reconfirmation keeps the consent granted
        act_cell = f"{pair(ACTION, event['action'])} →<br>{act_cell}"
    return (f'<tr id="act-{event["seq"]}"><td>#{event["seq"]}</td><td>{kst(act.recorded_at).replace(" ", "<br>", 1)}</td>'
            f"<td>{act_cell}</td>"
            f"<td>{basis(act.legal_basis)}</td><td>{_notice(event)}</td><td>{wording}</td>"
            f"<td>{_where(c, event)}</td></tr>")


def _acts(c: Certificate) -> str:
    body = []
    for p in c.purposes:
        recipient = ""
        if p.recipient:
            recipient = f" · 제공받는 자 {escape(p.recipient)}" + (
                f' <span class="en-text">(recipient: {escape(p.recipient_en)})</span>' if p.recipient_en else "")
        title = (f" — {escape(p.title_ko)}" if p.title_ko else "") + (
            f' <span class="en-text">{escape(p.title_en)}</span>' if p.title_en else "")
        body.append(f'<tr class="group" id="p-{escape(p.key)}"><td colspan="7"><b class="mono">{escape(p.key)}</b>'
                    f"{title}{recipient}</td></tr>")
        body += [_act_row(c, a) for a in p.acts]
    return (heading("3", "항목별 기록", "Acts by purpose", "acts")
            + f'<table class="acts"><thead><tr>{th("#", "seq")}{th("기록 시각", "Recorded")}'
              f'{th("행위 → 상태", "Act → status")}{th("법적 근거", "Legal basis")}{th("고지문", "Notice")}'
              f'{th("고지 내용", "Wording")}{th("수집 경로 · 방법 · 주체", "Point · method · actor")}</tr></thead>'
              f'<tbody>{"".join(body)}</tbody></table>')


def _text_block(lang: str, text: dict[str, Any] | None) -> str:
    if not text:
        return ""
    names = (("purpose", "목적", "Purpose"), ("items", "항목", "Items"), ("retention", "보유 기간", "Retention"),
             ("recipient", "제공받는 자", "Recipient"), ("refusal_right", "거부할 권리", "Right to refuse"),
             ("refusal_consequence", "거부 시 불이익", "If refused"))
    rows = []
    for name, ko, en in names:
        value = text.get(name)
        if value:
            shown = ", ".join(str(v) for v in value) if isinstance(value, list) else str(value)
            rows.append(f"<dt>{escape(ko if lang == 'ko' else en)}</dt><dd>{escape(shown)}</dd>")
    label = "한국어" if lang == "ko" else "English"
    return f'<div><div class="lang">{label}</div><dl>{"".join(rows)}</dl></div>'


def _wording(c: Certificate) -> str:
    out = [heading("4", "고지된 내용", "Wording shown", "wording"),
           "<p>각 행위 때 화면에 보인 항목별 고지 내용(해시로 원장에 묶임)과 고지문 판. "
           '<span class="en-text">The wording each act was shown, bound to the ledger by its hash, and the '
           "notice versions.</span></p>"]
    for (purpose, digest), content in sorted(c.disclosures.items()):
        seqs = [a.event["seq"] for a in c.acts_in_order
                if a.event["purpose"] == purpose and a.event["disclosure_hash"] == digest]
        out.append(f'<div class="wording" id="d-{escape(purpose)}-{escape(digest[:16])}">'
                   f'<b class="mono">{escape(purpose)}</b> · 행위 acts {", ".join(f"#{s}" for s in seqs)}'
                   f'<div class="hash">SHA-256 {escape(digest)}</div>'
                   f'<div class="langs">{_text_block("ko", content.get("ko"))}{_text_block("en", content.get("en"))}'
                   "</div></div>")
    missing = sorted({(a.event["purpose"], a.event["disclosure_hash"]) for a in c.acts_in_order
                      if a.event["disclosure_hash"]} - set(c.disclosures))
    for purpose, digest in missing:
        out.append(f'<p class="bad">{escape(purpose)}: 해시 {escape(digest)}의 고지 내용이 카탈로그에 없음 · '
                   "no stored wording has this hash</p>")
    if c.notices:
        rows = "".join(
            f'<tr><td class="mono">{escape(n["key"])}</td><td>{escape(n["version"])}</td><td>{escape(n["title"])}</td>'
            f'<td>{kst(n["effective_at"], seconds=False)}</td><td class="hash">{escape(n["sha256"])}</td></tr>'
            for n in sorted(c.notices.values(), key=lambda n: (n["key"], n["effective_at"])))
        out.append(f"<h3>고지문 <span class=\"en\">Notice versions</span></h3><table><thead><tr>"
                   f"{th('키', 'Key')}{th('판', 'Version')}{th('제목', 'Title')}{th('시행', 'In force from')}"
                   f"{th('본문 SHA-256', 'Text SHA-256')}</tr></thead><tbody>{rows}</tbody></table>")
    return "".join(out)


def render(c: Certificate) -> str:
    body = "".join((_header(c), _summary(c), _chart(c), _acts(c), _wording(c), proof_sections.render(c)))
    return (f'<!DOCTYPE html>\n<html lang="ko"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta name="referrer" content="no-referrer">'
            f"<title>개인정보 동의 확인서 · Certificate of consent — {escape(c.member)}</title>"
            f"<style>{CSS}</style></head><body><main class=\"page\">{body}</main></body></html>\n")
