"""The permission rules on states alone (app/permissions/rules.py), each with its article."""

from __future__ import annotations

from datetime import UTC, datetime

from app.permissions.rules import PurposeState, decide, is_night

DAY = datetime(2026, 11, 20, 5, 0, tzinfo=UTC)  # 14:00 KST


def _granted(key: str, channel: str | None, advertises: tuple[str, ...] = ()) -> PurposeState:
    event = {"id": f"e-{key}", "seq": 1, "action": "granted", "status": "granted", "recorded_at": DAY, "hash": "h"}
    return PurposeState(key=key, channel=channel, event=event, advertises=advertises)


def test_network_act_50_1_a_consent_covers_only_the_goods_its_wording_advertises():
    states = [_granted("marketing-phone", "phone", ("insurance",))]
    assert decide("phone", DAY, states, "insurance").allowed is True
    other = decide("phone", DAY, states, "concert-tickets")
    assert other.allowed is False and other.reasons[0]["code"] == "channel_not_asked"
    assert decide("phone", DAY, states).allowed is True  # no goods named: the channel consent alone


def test_network_act_50_1_1_the_exception_needs_no_decision_but_yields_to_a_refusal():
    customer = {"id": "t-1", "goods_category": "tickets", "transacted_at": DAY}
    never = [PurposeState(key="marketing-sms", channel="sms", event=None)]
    assert decide("sms", DAY, never, "tickets", customer).allowed is True
    refused = [PurposeState(key="marketing-sms", channel="sms",
                            event={"id": "e", "seq": 1, "action": "refused", "status": "refused",
                                   "recorded_at": DAY, "hash": "h"})]
    assert decide("sms", DAY, refused, "tickets", customer).allowed is False


def test_network_act_50_3_the_night_window_is_read_in_korea_standard_time():
    assert is_night(datetime(2026, 11, 20, 12, 0, tzinfo=UTC))       # 21:00 KST
    assert not is_night(datetime(2026, 11, 20, 11, 59, tzinfo=UTC))  # 20:59 KST
    assert is_night(datetime(2026, 11, 19, 22, 59, tzinfo=UTC))      # 07:59 KST
    assert not is_night(datetime(2026, 11, 19, 23, 0, tzinfo=UTC))   # 08:00 KST
