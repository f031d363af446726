"""The words and colours the certificate uses for the ledger's codes, in Korean and English."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from html import escape

from app.catalog import legal

KST = timezone(timedelta(hours=9), "KST")

# status -> (Korean, English, band colour, mark colour); the band of a status that ends processing
# is also hatched (chart.py), so the picture reads in black and white too.
STATUS: dict[str, tuple[str, str, str, str]] = {
    "granted": ("동의", "granted", "#a5d6a7", "#1b5e20"),
    "acknowledged": ("고지 확인", "acknowledged", "#90caf9", "#0d47a1"),
    "refused": ("거부", "refused", "#cfd8dc", "#455a64"),
    "withdrawn": ("철회", "withdrawn", "#ffcc80", "#e65100"),
    "expired": ("종료", "expired", "#d7ccc8", "#4e342e"),
    "revoked": ("취소", "revoked", "#ef9a9a", "#b71c1c"),
}
ACTION: dict[str, tuple[str, str]] = {
    "granted": ("동의", "granted"), "refused": ("거부", "refused"), "withdrawn": ("철회", "withdrawn"),
    "reconfirmed": ("재확인", "reconfirmed"), "expired": ("종료", "expired"), "revoked": ("취소", "revoked"),
    "acknowledged": ("고지 확인", "acknowledged"),
}
METHOD: dict[str, tuple[str, str]] = {
    "web": ("웹", "web"), "app": ("앱", "app"), "phone": ("전화", "phone"), "paper": ("서면", "paper"),
    "email": ("이메일", "email"), "api": ("API", "API"), "agree_all": ("전체 동의", "agree to all"),
}
ACTOR: dict[str, tuple[str, str]] = {
    "subject": ("본인", "the person"), "guardian": ("법정대리인", "legal guardian"),
    "operator": ("운영자", "operator"),
}
BASIS: dict[str, tuple[str, str]] = {
    "consent": ("동의", "consent"),
    "legal_obligation": ("법령상 의무", "legal obligation"),
    "public_task": ("공공기관의 소관 업무", "public task"),
    "contract": ("계약의 이행", "performance of a contract"),
    "vital_interest": ("생명·신체의 이익", "vital interest"),
    "legitimate_interest": ("정당한 이익", "legitimate interest"),
}


def pair(table: dict[str, tuple[str, ...]], code: str | None) -> str:
    """'한국어 English' for a code, escaped; the code itself when the table does not know it."""
    if code is None:
        return "—"
    found = table.get(code)
    return escape(f"{found[0]} {found[1]}" if found else code)


def basis(code: str) -> str:
    article = legal.LEGAL_BASES.get(code)
    return pair(BASIS, code) + (f' <span class="article">({escape(article)})</span>' if article else "")


def kst(value: datetime | None, *, seconds: bool = True) -> str:
    """An instant as the Korean reader reads it: KST, to the second."""
    if value is None:
        return "—"
    return value.astimezone(KST).strftime("%Y-%m-%d %H:%M:%S KST" if seconds else "%Y-%m-%d %H:%M KST")


def heading(number: str, ko: str, en: str, anchor: str, cls: str = "") -> str:
    klass = f' class="{cls}"' if cls else ""
    return f'<h2 id="{anchor}"{klass}><span class="num">{number}</span>{escape(ko)}<span class="en">{escape(en)}</span></h2>'


def th(ko: str, en: str) -> str:
    return f'<th>{escape(ko)}<span class="en">{escape(en)}</span></th>'
