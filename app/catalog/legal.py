"""The legal model of a purpose: its legal basis, and for consent its separate-consent category.

Why (docs/legal-model.md): since the PIPA amendment in force 2023-09-15, processing necessary to
perform a contract needs no consent (Art. 15(1)4), and consent must be free, specific and clear
(Decree Art. 17(1), in force 2024-09-15). Asking "required consent" for what a service needs to
run is now evidence of a bad practice, so a purpose declares its basis; only consent purposes get
a checkbox, the others are disclosed and acknowledged. Consent is asked separately per category
(Art. 22(1)), and a service may make consent a condition only where the law lets it need consent
(Art. 16(3), 22(5)).
"""

from __future__ import annotations

# basis -> the article it rests on
LEGAL_BASES: dict[str, str] = {
    "consent": "PIPA Art. 15(1)1",
    "legal_obligation": "PIPA Art. 15(1)2",
    "public_task": "PIPA Art. 15(1)3",
    "contract": "PIPA Art. 15(1)4",
    "vital_interest": "PIPA Art. 15(1)5",
    "legitimate_interest": "PIPA Art. 15(1)6",
}
CONSENT = "consent"

# category of a consent purpose -> the article that asks a separate consent for it
CATEGORIES: dict[str, str] = {
    "collection_use": "PIPA Art. 15(1)1",
    "third_party": "PIPA Art. 17(1)1",
    "beyond_purpose": "PIPA Art. 18(2)1",
    "sensitive": "PIPA Art. 23(1)1",
    "unique_identifier": "PIPA Art. 24(1)1",
    "marketing": "PIPA Art. 22(1)7; Network Act Art. 50(1)",
    "overseas_transfer": "PIPA Art. 28-8(1)1",
}
# The categories where a service may need consent to provide itself (Art. 16(3), 22(5)): elsewhere
# refusing must cost the person nothing.
MAY_BE_CONDITION = frozenset({"third_party", "sensitive", "unique_identifier", "overseas_transfer"})
CONDITION_ARTICLES = "PIPA Art. 16(3), 22(5)"

# Korean and English headings of the form's sections, in the order the form shows them.
SECTION_TITLES: dict[str, tuple[str, str]] = {
    "without_consent": ("동의 없이 처리하는 개인정보", "Processed without your consent"),
    "collection_use": ("개인정보 수집·이용 동의", "Consent to collection and use"),
    "third_party": ("개인정보 제3자 제공 동의", "Consent to provision to third parties"),
    "beyond_purpose": ("목적 외 이용·제공 동의", "Consent to use or provision beyond the original purpose"),
    "sensitive": ("민감정보 처리 동의", "Consent to processing of sensitive data"),
    "unique_identifier": ("고유식별정보 처리 동의", "Consent to processing of unique identifiers"),
    "overseas_transfer": ("개인정보 국외 이전 동의", "Consent to transfer abroad"),
    "marketing": ("마케팅·광고성 정보 수신 동의", "Consent to marketing and advertising"),
}
SECTION_ORDER = tuple(SECTION_TITLES)

# The purposes' `kind` before the legal model (still stored, still what webhook filters and bulk
# withdrawal by kind use): the category's name, with two exceptions: a consent purpose of
# collection and use is "optional" (the pre-2023 "required" survives only on purposes recorded
# before the change), and a purpose without consent is "disclosed".
LEGACY_KINDS = {"required", "optional"}


def kind_of(legal_basis: str, category: str | None) -> str:
    if legal_basis != CONSENT:
        return "disclosed"
    return "optional" if category == "collection_use" else str(category)


def category_of_kind(kind: str) -> str:
    """The category a pre-2023 kind stands for (what migration 0006 and old clients' `kind` map to)."""
    return "collection_use" if kind in LEGACY_KINDS else kind


def section_of(legal_basis: str, category: str | None) -> str:
    return "without_consent" if legal_basis != CONSENT else str(category)
