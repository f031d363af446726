"""Two demo tenants built from the seed privacy policies (app/demo/policies/*.txt)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

POLICIES = Path(__file__).parent / "policies"

REFUSE_OPTIONAL_KO = "동의를 거부할 권리가 있습니다."
REFUSE_OPTIONAL_EN = "You may refuse."
NO_COST_KO = "거부하셔도 회원가입 및 서비스 이용에 제한이 없습니다."
NO_COST_EN = "Refusing does not affect sign-up or use of the service."


def _text(purpose: str, items: list[str], retention: str, right: str, consequence: str,
          recipient: str | None = None) -> dict[str, Any]:
    text = {"purpose": purpose, "items": items, "retention": retention, "refusal_right": right,
            "refusal_consequence": consequence}
    if recipient:
        text["recipient"] = recipient
    return text


def _disclosed(purpose: str, items: list[str], retention: str) -> dict[str, Any]:
    """What a purpose processed without consent tells the person: no right to refuse to offer."""
    return {"purpose": purpose, "items": items, "retention": retention}


def _marketing(channel: str, ko_name: str, en_name: str, items_ko: list[str], items_en: list[str]) -> dict[str, Any]:
    return {
        "key": f"marketing-{channel}", "category": "marketing", "channel": channel,
        "disclosures": {
            "ko": _text(f"{ko_name}(으)로 이벤트·혜택 등 광고성 정보 수신", items_ko, "동의 철회 또는 회원 탈퇴 시까지",
                        REFUSE_OPTIONAL_KO, NO_COST_KO),
            "en": _text(f"Receiving advertising (events, offers) by {en_name}", items_en,
                        "Until withdrawal or account deletion", REFUSE_OPTIONAL_EN, NO_COST_EN),
        },
    }


SMALLTICKET: dict[str, Any] = {
    "tenant": {"id": "smallticket", "name": "㈜스몰티켓", "name_en": "Smallticket Inc."},
    "notice": {
        "key": "privacy-policy", "version": "2020-02-18", "title": "스몰티켓 개인정보 처리방침",
        "effective_at": "2020-02-18T00:00:00+09:00", "file": "smallticket.txt",
    },
    "recipients": [
        {"key": "insurers", "name": "보험사", "name_en": "Insurance companies"},
        {"key": "partners", "name": "제휴 협력사", "name_en": "Partner companies"},
    ],
    "processors": [
        {"key": "danal", "name": "(주)다날", "name_en": "Danal", "task": "본인확인 및 휴대폰인증",
         "task_en": "Identity and mobile phone verification"},
        {"key": "siot", "name": "(주)시옷", "name_en": "Siot", "task": "본인확인 및 휴대폰인증",
         "task_en": "Identity and mobile phone verification"},
        {"key": "nhn-kcp", "name": "엔에이치엔한국사이버결제 주식회사", "name_en": "NHN KCP",
         "task": "본인확인 및 휴대폰인증", "task_en": "Identity and mobile phone verification"},
        {"key": "jtnet", "name": "(주)제이티넷", "name_en": "JTNet", "task": "PG사 (카드결제)",
         "task_en": "Card payment gateway"},
        {"key": "alimi", "name": "(주)알리는사람들", "name_en": "Alineun Saramdeul", "task": "SMS, LMS 발송",
         "task_en": "SMS and LMS sending"},
        {"key": "stibee", "name": "스티비 주식회사", "name_en": "Stibee", "task": "Email 발송",
         "task_en": "Email sending"},
        {"key": "kt-hitel", "name": "케이티하이텔 주식회사", "name_en": "KT Hitel", "task": "카카오톡 메시지 발송",
         "task_en": "KakaoTalk message sending"},
        {"key": "glod", "name": "글로드", "name_en": "Glod", "task": "물류 대행, 고객 지급용 물품 발송",
         "task_en": "Logistics and delivery of goods to customers"},
    ],
    "purposes": [
        # Necessary to perform the membership contract (PIPA Art. 15(1)4): disclosed, not consented.
        {"key": "membership", "legal_basis": "contract", "disclosures": {
            "ko": _disclosed("회원 가입 의사의 확인, 연령 확인, 이용자 식별, 회원 탈퇴 의사의 확인 등 회원관리",
                             ["성명", "생년월일", "성별", "휴대번호", "닉네임", "비밀번호"],
                             "회원 탈퇴 시까지 (관계 법령에 따른 보존기간 별도)"),
            "en": _disclosed("Membership management: confirming sign-up and age, identifying users, handling withdrawal",
                             ["name", "birth date", "gender", "mobile number", "nickname", "password"],
                             "Until account deletion (statutory retention applies separately)"),
        },
         # 계약 또는 청약철회 등에 관한 기록 5년 (the seed policy, section 7)
         "retention": {"until": "termination", "years": 5, "statute": "전자상거래법 제6조, 시행령 제6조"}},
        # Records the law makes the service keep (e-commerce act Art. 6; Protection of Communications
        # Secrets Act Decree Art. 41): PIPA Art. 15(1)2, disclosed.
        {"key": "fraud-prevention", "legal_basis": "legal_obligation", "disclosures": {
            "ko": _disclosed("부정이용 방지, 비인가 사용 방지, 분쟁조정을 위한 기록보존, 민원 처리, 고지사항 전달",
                             ["IP 주소", "쿠키", "서비스 이용기록", "기기정보"],
                             "웹사이트 방문 기록 3개월, 소비자 불만 또는 분쟁처리 기록 3년"),
            "en": _disclosed("Preventing fraud and unauthorised use, keeping dispute records, handling complaints",
                             ["IP address", "cookies", "service usage records", "device information"],
                             "Visit logs 3 months; complaint and dispute records 3 years"),
        },
         # 소비자의 불만 또는 분쟁처리에 관한 기록 3년 (the longest of the records it keeps)
         "retention": {"until": "termination", "years": 3, "statute": "전자상거래법 제6조, 시행령 제6조"}},
        {"key": "insurance-contract", "category": "collection_use", "disclosures": {
            "ko": _text("보험계약의 가입, 청약, 변경, 보험금 청구 등 보험계약 관련 서비스 제공 및 리워드 지급",
                        ["주소", "보험가입정보(보험회사, 증권번호, 보험료, 보험기간)"],
                        "계약 또는 청약철회 기록 5년, 대금결제 기록 5년", REFUSE_OPTIONAL_KO,
                        "거부하셔도 회원가입은 가능하나 보험 관련 서비스를 이용할 수 없습니다."),
            "en": _text("Insurance contract services (application, changes, claims) and rewards",
                        ["address", "insurance data (insurer, policy number, premium, period)"],
                        "Contract records 5 years; payment records 5 years", REFUSE_OPTIONAL_EN,
                        "You can still sign up, but insurance services will not be available."),
        }},
        {"key": "analytics", "category": "collection_use", "disclosures": {
            "ko": _text("신규 서비스 개발, 서비스 이용기록과 접속빈도 분석, 통계에 따른 맞춤 서비스 제공",
                        ["서비스 이용기록", "접속빈도", "쿠키"], "회원 탈퇴 시까지", REFUSE_OPTIONAL_KO, NO_COST_KO),
            "en": _text("Developing services, analysing usage and visit frequency, personalised services",
                        ["service usage records", "visit frequency", "cookies"], "Until account deletion",
                        REFUSE_OPTIONAL_EN, NO_COST_EN),
        }},
        {"key": "marketing", "category": "marketing", "disclosures": {
            "ko": _text("설문조사, 이벤트 정보 및 참여기회 제공, 광고성 정보 제공 등 마케팅",
                        ["성명", "휴대번호", "이메일"], "동의 철회 또는 회원 탈퇴 시까지", REFUSE_OPTIONAL_KO,
                        NO_COST_KO),
            "en": _text("Marketing: surveys, events, advertising", ["name", "mobile number", "email"],
                        "Until withdrawal or account deletion", REFUSE_OPTIONAL_EN, NO_COST_EN),
        }},
        _marketing("sms", "문자메시지(SMS/LMS)", "text message (SMS/LMS)", ["휴대번호"], ["mobile number"]),
        _marketing("email", "이메일", "email", ["이메일"], ["email"]),
        _marketing("kakao", "카카오톡 메시지", "KakaoTalk message", ["휴대번호"], ["mobile number"]),
        _marketing("push", "앱 푸시", "app push notification", ["기기 식별자"], ["device identifier"]),
        {"key": "marketing-night", "category": "marketing", "channel": "night", "disclosures": {
            "ko": _text("야간(21시~다음날 8시) 광고성 정보 수신 (이메일 제외)", ["휴대번호", "기기 식별자"],
                        "동의 철회 또는 회원 탈퇴 시까지", REFUSE_OPTIONAL_KO, NO_COST_KO),
            "en": _text("Advertising between 21:00 and 08:00 (email excluded)", ["mobile number", "device identifier"],
                        "Until withdrawal or account deletion", REFUSE_OPTIONAL_EN, NO_COST_EN),
        }},
        {"key": "third-party-insurers", "category": "third_party", "recipient": "insurers", "disclosures": {
            "ko": _text("보험 가입 및 청구 관련 서비스 제공",
                        ["성명", "생년월일", "전화번호", "주소", "보험담보정보", "보험기간", "보험료", "청구정보"],
                        "제공 목적 달성 시 즉시 파기 (관계 법령에 따른 보존기간 별도)", REFUSE_OPTIONAL_KO,
                        "거부하셔도 회원가입은 가능하나 보험 가입 및 청구 서비스를 이용할 수 없습니다."),
            "en": _text("Insurance application and claims services",
                        ["name", "birth date", "phone number", "address", "coverage", "period", "premium",
                         "claim data"],
                        "Destroyed once the purpose is met (statutory retention applies)", REFUSE_OPTIONAL_EN,
                        "You can still sign up, but insurance application and claims will not be available."),
        }},
        {"key": "third-party-partners", "category": "third_party", "recipient": "partners", "disclosures": {
            "ko": _text("이용자 맞춤형 서비스 개발 및 제공",
                        ["회원 가입 시 제공되는 개인식별정보", "활동 내역"],
                        "제공 목적 달성 시 즉시 파기 (관계 법령에 따른 보존기간 별도)", REFUSE_OPTIONAL_KO, NO_COST_KO),
            "en": _text("Developing and providing personalised services",
                        ["identifying data given at sign-up", "activity history"],
                        "Destroyed once the purpose is met (statutory retention applies)", REFUSE_OPTIONAL_EN,
                        NO_COST_EN),
        }},
    ],
    "collection_points": [
        {"key": "signup", "name": "회원가입", "kind": "signup", "notice_key": "privacy-policy",
         "purposes": ["membership", "fraud-prevention", "insurance-contract", "analytics", "marketing",
                      "marketing-sms", "marketing-email", "marketing-kakao", "marketing-night",
                      "third-party-insurers", "third-party-partners"]},
        {"key": "preferences", "name": "마케팅 수신 설정", "kind": "preference_center",
         "notice_key": "privacy-policy",
         "purposes": ["marketing", "marketing-sms", "marketing-email", "marketing-kakao", "marketing-push",
                      "marketing-night"]},
        # The insurance service itself cannot work without giving the insurer the data: there (and only
        # there) the insurer provision is a condition of the service (PIPA Art. 16(3), 22(5)).
        {"key": "insurance", "name": "보험 가입 신청", "kind": "other", "notice_key": "privacy-policy",
         "purposes": ["insurance-contract", {"key": "third-party-insurers", "condition_of_service": True}]},
    ],
}

TICKETPARTNER: dict[str, Any] = {
    "tenant": {"id": "ticketpartner", "name": "주식회사 카카오엠 (티켓파트너센터)",
               "name_en": "Kakao M Corp. (Ticket Partner Center)"},
    "notice": {
        "key": "privacy-policy", "version": "2018-03-23", "title": "티켓파트너센터 개인정보처리방침",
        "effective_at": "2018-03-23T00:00:00+09:00", "file": "ticketpartner.txt",
    },
    "recipients": [],
    "processors": [
        {"key": "kmcert", "name": "한국모바일인증 주식회사", "name_en": "Korea Mobile Certification",
         "task": "휴대전화를 이용한 본인확인 서비스", "task_en": "Identity verification by mobile phone"},
    ],
    "purposes": [
        {"key": "partner-membership", "legal_basis": "contract", "disclosures": {
            "ko": _disclosed("페이지 가입 인증, 회원제 서비스 운영 및 관리, 법령에 따른 나이 확인, 중요사항 고지, "
                             "멜론티켓 이용자의 민원사항 전달",
                             ["담당자 이름", "아이디(ID)", "휴대전화번호"],
                             "회원 탈퇴 후 1년 (부정사용 방지, 대금 및 수수료 정산)"),
            "en": _disclosed("Sign-up verification, membership operation, age checks, notices, complaint handling",
                             ["contact name", "user ID", "mobile number"],
                             "1 year after withdrawal (fraud prevention, settlement)"),
        }},
        {"key": "service-logs", "legal_basis": "legal_obligation", "disclosures": {
            "ko": _disclosed("관련 법령에 따른 보존 의무 준수, 부정이용 제재, 서비스 장애 시 민원 처리",
                             ["서비스 이용기록", "접속로그", "쿠키", "IP Address", "이용정지 기록", "방문일시"],
                             "회원 탈퇴 후 1년, 웹사이트 방문 기록 3개월"),
            "en": _disclosed("Legal retention duties, sanctioning misuse, handling outages",
                             ["usage records", "access logs", "cookies", "IP address", "suspension records",
                              "visit times"],
                             "1 year after withdrawal; visit logs 3 months"),
        }},
    ],
    "collection_points": [
        {"key": "signup", "name": "파트너 회원가입", "kind": "signup", "notice_key": "privacy-policy",
         "purposes": ["partner-membership", "service-logs"]},
    ],
}

DEMO_TENANTS = (SMALLTICKET, TICKETPARTNER)
