"""The timeline chart on its own: a history over years (as a real member's is), the axis it gets,
one mark per act where its time puts it, the status bands, escaping."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from xml.etree import ElementTree

from app.certificate.chart import ticks, timeline
from app.certificate.gather import Act, PurposeLine, _basis_at

SVG = "{http://www.w3.org/2000/svg}"


def _act(seq: int, purpose: str, action: str, status: str, at: datetime) -> Act:
    event = {"seq": seq, "id": f"00000000-0000-0000-0000-{seq:012d}", "purpose": purpose, "action": action,
             "status": status}
    return Act(event=event, canonical="{}", legal_basis="consent", seal="sealed", breaks=[], inclusion=None,
               included=False, recorded_at=at)


def _line(key: str, title: str, acts: list[Act]) -> PurposeLine:
    return PurposeLine(key=key, kind="marketing", category="marketing", channel=None, legal_basis="consent",
                       section="marketing", title_ko=title, title_en=None, recipient=None, recipient_en=None,
                       acts=acts)


T0 = datetime(2023, 3, 14, 1, 30, tzinfo=UTC)


def _history() -> list[PurposeLine]:
    return [
        _line("membership", "회원 관리", [_act(1, "membership", "acknowledged", "acknowledged", T0)]),
        _line("marketing-sms", "<script>alert(1)</script> 문자 광고", [
            _act(2, "marketing-sms", "granted", "granted", T0),
            _act(4, "marketing-sms", "reconfirmed", "granted", T0 + timedelta(days=700)),
            _act(5, "marketing-sms", "withdrawn", "withdrawn", T0 + timedelta(days=900))]),
        _line("marketing-email", "이메일 광고", [
            _act(3, "marketing-email", "refused", "refused", T0),
            _act(6, "marketing-email", "granted", "granted", T0 + timedelta(days=400)),
            _act(7, "marketing-email", "expired", "expired", T0 + timedelta(days=1100))]),
    ]


def test_a_history_over_years_gets_a_calendar_axis_and_one_mark_per_act():
    end = T0 + timedelta(days=1200)
    svg = timeline(_history(), end)
    root = ElementTree.fromstring(svg)  # well-formed XML: the markup in a title did not break out
    assert "<script" not in svg and "&lt;script&gt;" in svg
    acts = [g for g in root.iter(f"{SVG}g") if g.get("class") == "act"]
    assert [int(g.get("data-seq")) for g in acts] == [1, 2, 4, 5, 3, 6, 7]
    # each mark sits where its time puts it: later acts of a band further right
    xs = {}
    for g in acts:
        assert [e for e in g if e.tag in (f"{SVG}circle", f"{SVG}rect", f"{SVG}path")]  # its mark
        xs[int(g.get("data-seq"))] = float(g.find(f"{SVG}text").get("x"))
    assert xs[2] < xs[4] < xs[5] and xs[3] < xs[6] < xs[7] and xs[1] == xs[2] == xs[3]
    assert abs((xs[6] - xs[2]) / (xs[7] - xs[2]) - 400 / 1100) < 0.01  # a linear time axis
    labels = [t.text for t in root.iter(f"{SVG}text") if t.text and re.fullmatch(r"\d{4}(-\d\d)?", t.text)]
    assert labels and all(re.fullmatch(r"\d{4}-\d\d", label) for label in labels)  # months, over 3 years
    # bands: hatched where processing stopped, plain where granted
    fills = {r.get("fill") for r in root.iter(f"{SVG}rect")}
    assert "url(#hatch-withdrawn)" in fills and "url(#hatch-expired)" in fills and "#a5d6a7" in fills
    out = Path(__file__).resolve().parents[2] / "artifacts"
    out.mkdir(exist_ok=True)
    (out / "timeline-years.svg").write_text(svg, encoding="utf-8")


def test_ticks_follow_the_span_from_milliseconds_to_decades():
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for span, most in ((timedelta(milliseconds=800), 8), (timedelta(hours=5), 8), (timedelta(days=40), 8),
                       (timedelta(days=365 * 30), 8)):
        step, marks = ticks(start, start + span)
        assert 2 <= len(marks) <= most, (span, len(marks))
        assert all(start <= m <= start + span for m in marks) and marks == sorted(marks)


def test_the_legal_basis_at_an_act_is_the_one_in_force_then():
    changes = [{"effective_from": datetime(2024, 1, 1, tzinfo=UTC), "legal_basis_before": "consent",
                "legal_basis": "contract"}]
    assert _basis_at(changes, "contract", datetime(2023, 6, 1, tzinfo=UTC)) == "consent"
    assert _basis_at(changes, "contract", datetime(2024, 6, 1, tzinfo=UTC)) == "contract"
    assert _basis_at([], "legal_obligation", datetime(2024, 6, 1, tzinfo=UTC)) == "legal_obligation"
