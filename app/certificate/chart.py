"""The timeline of a member's consents as an inline SVG, drawn on the server.

One band per purpose along a linear time axis (KST) from the first act to the certificate's issue:
each stretch coloured by the status it had, hatched where processing stopped (refused, withdrawn,
expired, revoked) so the picture survives a black-and-white printer, and one mark per act (shape by
action, number = the event's `seq`, so the tables below can be found from the picture). Only
presentation attributes, no `style` attribute nor script: the page's Content-Security-Policy allows
its one stylesheet and nothing else.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from html import escape
from typing import Callable, Iterator, Sequence

from app.certificate.gather import Act, PurposeLine
from app.certificate.labels import ACTION, KST, STATUS

WIDTH = 760
LABEL = 170  # the purposes' names, left of the bands
RIGHT = 24
ROW = 38
BAND = 22
TOP = 8
AXIS = 44
HATCHED = ("refused", "withdrawn", "expired", "revoked")

# Tick steps below a month, in seconds; months and years are stepped on the calendar.
STEPS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800,
         3600, 7200, 10800, 21600, 43200, 86400, 2 * 86400, 7 * 86400, 14 * 86400)
MONTH_STEPS = (1, 2, 3, 6, 12, 24, 60, 120)
MAX_TICKS = 8


def _attr(value: object) -> str:
    return escape(str(value), quote=True)


def _fmt(step: float, at: datetime) -> str:
    local = at.astimezone(KST)
    if step >= 365 * 86400:
        return local.strftime("%Y")
    if step >= 28 * 86400:
        return local.strftime("%Y-%m")
    if step >= 86400:
        return local.strftime("%Y-%m-%d")
    if step >= 60:
        return local.strftime("%m-%d %H:%M") if step >= 3600 else local.strftime("%H:%M")
    if step >= 1:
        return local.strftime("%H:%M:%S")
    return local.strftime("%H:%M:%S.") + f"{local.microsecond // 1000:03d}"


def _months(start: datetime, end: datetime, months: int) -> Iterator[datetime]:
    local = start.astimezone(KST)
    index = local.year * 12 + local.month - 1
    index += (-index) % months
    while True:
        year, month = divmod(index, 12)
        at = datetime(year, month + 1, 1, tzinfo=KST)
        if at > end:
            return
        if at >= start:
            yield at
        index += months


def ticks(start: datetime, end: datetime) -> tuple[float, list[datetime]]:
    """(step in seconds, tick instants) for the span: the finest step giving at most MAX_TICKS."""
    span = (end - start).total_seconds()
    for step in STEPS:
        if span / step <= MAX_TICKS:
            # ticks at multiples of the step in KST wall time (midnight, the full hour ...)
            base = datetime(2000, 1, 1, tzinfo=KST)
            first = math.ceil((start - base).total_seconds() / step)
            last = math.floor((end - base).total_seconds() / step)
            return step, [base + timedelta(seconds=i * step) for i in range(first, last + 1)]
    for months in MONTH_STEPS:
        if span / (months * 30.44 * 86400) <= MAX_TICKS:
            break
    return months * 30.44 * 86400, list(_months(start, end, months))


def _mark(action: str, x: float, y: float, colour: str) -> str:
    """The act's shape: circle to give or keep, square refused, diamond withdrawn or revoked,
    triangle ended; a reconfirmation is a circle in a ring."""
    stroke = 'stroke="#ffffff" stroke-width="1.5"'
    if action == "refused":
        return f'<rect x="{x - 5:.1f}" y="{y - 5:.1f}" width="10" height="10" fill="{colour}" {stroke}/>'
    if action in ("withdrawn", "revoked"):
        return (f'<path d="M{x:.1f} {y - 7:.1f} L{x + 7:.1f} {y:.1f} L{x:.1f} {y + 7:.1f} L{x - 7:.1f} {y:.1f} Z" '
                f'fill="{colour}" {stroke}/>')
    if action == "expired":
        return (f'<path d="M{x:.1f} {y - 6:.1f} L{x + 6:.1f} {y + 5:.1f} L{x - 6:.1f} {y + 5:.1f} Z" '
                f'fill="{colour}" {stroke}/>')
    ring = f'<circle cx="{x:.1f}" cy="{y:.1f}" r="8.5" fill="none" stroke="{colour}" stroke-width="1.5"/>' \
        if action == "reconfirmed" else ""
    return f'{ring}<circle cx="{x:.1f}" cy="{y:.1f}" r="5.5" fill="{colour}" {stroke}/>'


def _defs() -> str:
    patterns = "".join(
        f'<pattern id="hatch-{s}" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
        f'<rect width="6" height="6" fill="{STATUS[s][2]}"/>'
        f'<line x1="0" y1="0" x2="0" y2="6" stroke="{STATUS[s][3]}" stroke-width="1.2" stroke-opacity="0.45"/>'
        f'</pattern>' for s in HATCHED)
    return f"<defs>{patterns}</defs>"


def _fill(status: str) -> str:
    return f"url(#hatch-{status})" if status in HATCHED else STATUS.get(status, ("", "", "#eeeeee"))[2]


def _band(line: PurposeLine, y: float, x: Callable[[datetime], float], end: datetime) -> list[str]:
    out = [f'<g class="band" data-purpose="{_attr(line.key)}">',
           f'<text x="{LABEL - 10}" y="{y + 9:.1f}" text-anchor="end" font-size="12" font-weight="600" '
           f'fill="#1a1a1a">{escape(line.key)}</text>']
    if line.title_ko:
        title = line.title_ko if len(line.title_ko) <= 15 else line.title_ko[:14] + "…"
        out.append(f'<text x="{LABEL - 10}" y="{y + 23:.1f}" text-anchor="end" font-size="10" fill="#555555">'
                   f'{escape(title)}</text>')
    mid = y + BAND / 2
    out.append(f'<line x1="{LABEL + 12}" y1="{mid:.1f}" x2="{WIDTH - RIGHT}" y2="{mid:.1f}" stroke="#d0d0d0" '
               f'stroke-width="1" stroke-dasharray="2 3"/>')
    acts = line.acts
    for act, following in zip(acts, [*acts[1:], None]):
        x0, x1 = x(act.recorded_at), x(following.recorded_at if following else end)
        status = act.event["status"]
        out.append(f'<rect x="{x0:.1f}" y="{y:.1f}" width="{max(x1 - x0, 1.5):.1f}" height="{BAND}" '
                   f'fill="{_fill(status)}" stroke="{STATUS.get(status, ("", "", "", "#999999"))[3]}" '
                   f'stroke-width="0.6" stroke-opacity="0.6"/>')
    for act in acts:
        event = act.event
        ko, en = ACTION.get(event["action"], (event["action"], event["action"]))
        colour = STATUS.get(event["status"], ("", "", "", "#333333"))[3]
        cx = x(act.recorded_at)
        when = act.recorded_at.astimezone(KST).strftime("%Y-%m-%d %H:%M:%S KST")
        out.append(f'<g class="act" data-seq="{event["seq"]}" data-event="{_attr(event["id"])}">'
                   f'<title>#{event["seq"]} {escape(when)} {escape(ko)} / {escape(en)} → {escape(event["status"])}'
                   f'</title>{_mark(event["action"], cx, mid, colour)}'
                   f'<text x="{cx:.1f}" y="{y - 2:.1f}" text-anchor="middle" font-size="9" fill="{colour}">'
                   f'{event["seq"]}</text></g>')
    out.append("</g>")
    return out


def _width(text: str, size: float = 10) -> float:
    """About how wide a label is drawn (Hangul a full em, Latin about half)."""
    return sum(size if ord(ch) > 0x2E80 else size * 0.56 for ch in text)


def _legend(y: float, shown: Sequence[str]) -> tuple[list[str], float]:
    """The key to the colours (statuses shown) and to the marks, flowed over as many lines as it
    takes; (parts, height)."""
    items: list[tuple[float, Callable[[float, float], str]]] = []
    for status in shown:
        ko, en, _, mark = STATUS[status]
        items.append((34 + _width(f"{ko} {en}"), lambda cx, cy, s=status, m=mark, t=f"{ko} {en}": (
            f'<rect x="{cx:.1f}" y="{cy - 9:.1f}" width="24" height="11" fill="{_fill(s)}" stroke="{m}" '
            f'stroke-width="0.6"/><text x="{cx + 29:.1f}" y="{cy:.1f}" font-size="10" fill="#1a1a1a">'
            f"{escape(t)}</text>")))
    for action, text in (("granted", "동의·확인 granted"), ("refused", "거부 refused"),
                         ("withdrawn", "철회 withdrawn"), ("reconfirmed", "재확인 reconfirmed"),
                         ("expired", "종료 expired")):
        items.append((26 + _width(text), lambda cx, cy, a=action, t=text: (
            _mark(a, cx + 8, cy - 4, "#444444")
            + f'<text x="{cx + 20:.1f}" y="{cy:.1f}" font-size="10" fill="#1a1a1a">{escape(t)}</text>')))
    out, cx, cy, left = ['<g class="legend">'], LABEL - 150.0, y + 12, LABEL - 150.0
    for i, (width, draw) in enumerate(items):
        if cx + width > WIDTH - RIGHT or i == len(shown):  # the marks start a line of their own
            cx, cy = left, cy + 18
        out.append(draw(cx, cy))
        cx += width + 14
    out.append("</g>")
    return out, cy - y + 8


def timeline(purposes: Sequence[PurposeLine], end: datetime) -> str:
    """The SVG element (no XML prologue: it is inlined in the HTML)."""
    acts: list[Act] = [a for p in purposes for a in p.acts]
    if not acts:
        return ('<svg class="timeline" viewBox="0 0 760 40" role="img" aria-label="no acts" '
                'xmlns="http://www.w3.org/2000/svg"><text x="380" y="24" text-anchor="middle" font-size="13">'
                '기록된 행위 없음 / no acts recorded</text></svg>')
    start = min(a.recorded_at for a in acts)
    end = max(end, max(a.recorded_at for a in acts))
    span = max((end - start).total_seconds(), 0.001)
    lo, hi = start - timedelta(seconds=span * 0.03), end
    inner = WIDTH - RIGHT - LABEL - 12

    def x(at: datetime) -> float:
        return LABEL + 12 + inner * (at - lo).total_seconds() / (hi - lo).total_seconds()

    axis_y = TOP + 12 + len(purposes) * ROW
    shown = [s for s in STATUS if any(a.event["status"] == s for a in acts)]
    legend, legend_height = _legend(axis_y + AXIS, shown)
    height = axis_y + AXIS + legend_height
    parts = [f'<svg class="timeline" viewBox="0 0 {WIDTH} {height}" width="100%" role="img" '
             f'aria-label="동의 상태 타임라인 / consent timeline" xmlns="http://www.w3.org/2000/svg" '
             f'font-family="Noto Sans CJK KR, Noto Sans KR, sans-serif">', _defs()]
    step, marks = ticks(lo, hi)
    for at in marks:
        tx = x(at)
        parts.append(f'<line x1="{tx:.1f}" y1="{TOP}" x2="{tx:.1f}" y2="{axis_y + 4}" stroke="#e6e6e6" '
                     f'stroke-width="1"/><text x="{tx:.1f}" y="{axis_y + 17}" text-anchor="middle" font-size="10" '
                     f'fill="#444444">{escape(_fmt(step, at))}</text>')
    for i, line in enumerate(purposes):
        parts += _band(line, TOP + 12 + i * ROW, x, end)
    parts.append(f'<line x1="{LABEL + 12}" y1="{axis_y + 4}" x2="{WIDTH - RIGHT}" y2="{axis_y + 4}" stroke="#444444" '
                 f'stroke-width="1"/>')
    now = x(end)
    parts.append(f'<line x1="{now:.1f}" y1="{TOP}" x2="{now:.1f}" y2="{axis_y + 4}" stroke="#8a1c1c" '
                 f'stroke-width="1" stroke-dasharray="4 3"/>'
                 f'<text x="{now:.1f}" y="{axis_y + 32}" text-anchor="end" font-size="10" fill="#8a1c1c">'
                 f'발급 issued {escape(end.astimezone(KST).strftime("%Y-%m-%d %H:%M:%S"))}</text>'
                 f'<text x="{LABEL + 12}" y="{axis_y + 32}" font-size="10" fill="#444444">'
                 f'KST (UTC+9) · {escape(start.astimezone(KST).strftime("%Y-%m-%d %H:%M:%S"))}</text>')
    parts += legend
    parts.append("</svg>")
    return "".join(parts)
