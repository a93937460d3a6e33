"""Decisions with time as an argument: delays, reminders, quiet hours (incl. DST), outcomes."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from service.core.decide import (
    PartyState,
    PartyStatus,
    Policy,
    due_step,
    in_quiet_hours,
    next_sendable,
    referral_outcome,
    reply_step,
)
from service.core.model import Classification, Outcome, Person

POLICY = Policy(timedelta(days=3), timedelta(days=4), 1, timedelta(days=14), ZoneInfo("UTC"))
NOW = datetime(2026, 10, 8, 9, 0, tzinfo=UTC)


def state(status: PartyStatus, **kw) -> PartyState:
    return PartyState(1, 1, Person("bob@acme.example", "Bob"), Person("alice@example.com"),
                      (Person("carol@studio.example"),), status, **kw)


def test_request_then_one_reminder_then_no_response() -> None:
    s1 = due_step(state(PartyStatus.SCHEDULED), NOW, POLICY)
    assert [m.kind for m in s1.sends] == ["feedback_request"]
    assert s1.status is PartyStatus.REQUESTED and s1.next_due_at == NOW + timedelta(days=4)
    s2 = due_step(state(PartyStatus.REQUESTED, requests_sent=1, rounds=1), NOW, POLICY)
    assert [m.kind for m in s2.sends] == ["reminder"] and s2.reminders_sent == 1
    s3 = due_step(state(PartyStatus.REQUESTED, requests_sent=2, reminders_sent=1, rounds=1),
                  NOW, POLICY)
    assert s3.sends == () and s3.status is PartyStatus.NORESPONSE


def test_keys_are_unique_per_logical_message() -> None:
    a = due_step(state(PartyStatus.SCHEDULED), NOW, POLICY).sends[0].key
    b = due_step(state(PartyStatus.PENDING, rounds=1), NOW, POLICY).sends[0].key
    assert a != b


def test_suppressed_party_gets_nothing() -> None:
    step = due_step(state(PartyStatus.SCHEDULED, suppressed=True), NOW, POLICY)
    assert step.sends == ()


def _verdict(o: Outcome) -> Classification:
    return Classification(o, 0.9, "test")


def test_reply_outcomes_trigger_the_right_mail() -> None:
    op = Person("ops@example.com")
    kinds = {
        o: [(m.kind, m.to.email) for m in reply_step(state(PartyStatus.REQUESTED),
                                                    _verdict(o), NOW, POLICY,
                                                    reply_key="9", operator=op).sends]
        for o in Outcome
    }
    assert kinds[Outcome.POSITIVE] == [("thanks_positive", "bob@acme.example"),
                                       ("appreciation", "alice@example.com")]
    assert kinds[Outcome.NEGATIVE] == [("thanks_negative", "bob@acme.example"),
                                       ("lessons", "alice@example.com")]
    assert kinds[Outcome.PENDING] == [("pending_ack", "bob@acme.example")]
    assert kinds[Outcome.OPTOUT] == [("optout_confirmation", "bob@acme.example")]
    assert kinds[Outcome.UNCLEAR] == [("unclear_review", "ops@example.com")]


def test_pending_asks_again_later() -> None:
    step = reply_step(state(PartyStatus.REQUESTED), _verdict(Outcome.PENDING), NOW, POLICY,
                      reply_key="1", operator=None)
    assert step.status is PartyStatus.PENDING and step.next_due_at == NOW + timedelta(days=14)


def test_quiet_hours_across_midnight_and_dst() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    p = Policy(POLICY.feedback_delay, POLICY.reminder_delay, 1, POLICY.pending_recheck, berlin,
               (time(20, 0), time(8, 0)))
    late = datetime(2026, 10, 24, 19, 30, tzinfo=UTC)  # 21:30 in Berlin (CEST)
    assert in_quiet_hours(late, p)
    # the night the clocks go back: 08:00 CET on Sunday 25 Oct is 07:00 UTC
    assert next_sendable(late, p) == datetime(2026, 10, 25, 7, 0, tzinfo=UTC)
    noon = datetime(2026, 10, 26, 11, 0, tzinfo=UTC)
    assert not in_quiet_hours(noon, p) and next_sendable(noon, p) == noon


def test_referral_outcome() -> None:
    P, N, W = Outcome.POSITIVE, Outcome.NEGATIVE, Outcome.PENDING
    assert referral_outcome([P, P]) == "worked"
    assert referral_outcome([P, None]) == "working"
    assert referral_outcome([N, None]) == "did_not_work"
    assert referral_outcome([P, N]) == "mixed"
    assert referral_outcome([W, None]) == "open"
