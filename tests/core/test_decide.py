"""Decisions with time as an argument: delays, reminders, quiet hours (incl. DST), outcomes."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from service.core.decide import (
    MAX_SEND_ATTEMPTS,
    Batch,
    PartyState,
    PartyStatus,
    Policy,
    batch_for_person,
    cap_slot,
    due_step,
    in_quiet_hours,
    next_sendable,
    party_slot,
    referral_outcome,
    reply_step,
    retry_delay,
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


# ---------------------------------------------------------------- quiet time, caps, batching
# (time travel: every moment is an argument; time-machine moves the process clock for the
# one test that goes through code reading it)


BERLIN = ZoneInfo("Europe/Berlin")
NIGHTS = Policy(timedelta(days=3), timedelta(days=4), 1, timedelta(days=14), BERLIN,
                (time(20, 0), time(8, 0)))


def test_quiet_weekends_wait_for_monday_morning() -> None:
    p = replace(NIGHTS, quiet_weekends=True)
    friday_night = datetime(2026, 10, 23, 19, 0, tzinfo=UTC)  # 21:00 Friday in Berlin
    saturday_noon = datetime(2026, 10, 24, 10, 0, tzinfo=UTC)
    # Sunday 25 Oct the clocks go back: Monday 08:00 CET is 07:00 UTC
    monday_8 = datetime(2026, 10, 26, 7, 0, tzinfo=UTC)
    assert in_quiet_hours(saturday_noon, p)
    assert next_sendable(friday_night, p) == monday_8
    assert next_sendable(saturday_noon, p) == monday_8
    # without quiet hours, a weekend ends at Monday 00:00 local time
    days_only = replace(p, quiet_hours=None)
    assert next_sendable(saturday_noon, days_only) == datetime(2026, 10, 25, 23, 0, tzinfo=UTC)
    # weekends are not quiet unless asked for
    assert next_sendable(saturday_noon, NIGHTS) == saturday_noon


def test_quiet_hours_end_in_a_spring_forward_gap() -> None:
    # quiet until 02:30, a wall time that does not exist on 29 March 2026 in Berlin
    p = replace_policy(quiet_hours=(time(22, 0), time(2, 30)))
    late = datetime(2026, 3, 28, 22, 0, tzinfo=UTC)  # 23:00 CET
    moment = next_sendable(late, p)
    assert not in_quiet_hours(moment, p)
    assert datetime(2026, 3, 29, 0, 0, tzinfo=UTC) < moment <= datetime(2026, 3, 29, 1, 30,
                                                                         tzinfo=UTC)


def replace_policy(**kw: object) -> Policy:
    return replace(NIGHTS, **kw)  # type: ignore[arg-type]


def test_cap_counts_a_rolling_week_including_queued_mail() -> None:
    t0 = datetime(2026, 10, 5, 9, 0, tzinfo=UTC)
    sent = [t0, t0 + timedelta(days=1), t0 + timedelta(days=2)]
    # three in the last week: the fourth waits until the first is 7 days (168 h) old
    assert cap_slot(t0 + timedelta(days=3), sent, 3) == t0 + timedelta(days=7)
    assert cap_slot(t0 + timedelta(days=3), sent, 4) == t0 + timedelta(days=3)
    assert cap_slot(t0 + timedelta(days=3), sent, 0) == t0 + timedelta(days=3)  # 0 = no cap
    # a message already queued for later counts too: its window must not overflow either
    queued = [t0 + timedelta(days=5), t0 + timedelta(days=6)]
    assert cap_slot(t0, queued, 2) == t0 + timedelta(days=12)


def test_cap_window_is_168_hours_across_dst() -> None:
    p = replace_policy(quiet_hours=None, party_weekly_cap=1)
    before = datetime(2026, 10, 22, 10, 0, tzinfo=UTC)  # Thursday, CEST
    # a week later in absolute time is 11:00 local instead of 12:00: the rule is 168 h
    assert party_slot(before + timedelta(hours=1), p, [before]) == before + timedelta(days=7)


def test_party_slot_combines_quiet_hours_and_cap() -> None:
    p = replace_policy(party_weekly_cap=1)
    sent = datetime(2026, 10, 20, 19, 30, tzinfo=UTC)  # 21:30 Tuesday: sent before quiet hours
    # the week ends at 19:30 UTC next Tuesday, inside quiet hours: next morning 08:00 local
    assert party_slot(sent + timedelta(hours=1), p, [sent]) == datetime(2026, 10, 28, 7, 0,
                                                                        tzinfo=UTC)


def _due(party_id: int, referral_id: int, status: PartyStatus = PartyStatus.SCHEDULED, **kw):
    st = PartyState(party_id, referral_id, Person("bob@acme.example", "Bob"),
                    Person(f"m{referral_id}@example.com"), (Person("carol@x.example"),),
                    status, **kw)
    return due_step(st, NOW, POLICY)


def test_requests_falling_due_together_become_one_message() -> None:
    steps = [_due(1, 1), _due(5, 3), _due(9, 4, PartyStatus.REQUESTED, rounds=1,
                                                 requests_sent=1)]
    batch = batch_for_person(steps, NOW, POLICY, [])
    assert batch.hold_until is None and batch.send is not None
    assert batch.send.kind == "combined_request"
    items = batch.send.facts["items"]
    assert [i["party_id"] for i in items] == [1, 5, 9]
    assert [i["kind"] for i in items] == ["feedback_request", "feedback_request", "reminder"]
    # the key names every logical message: a second pass cannot queue any of them again
    assert batch.send.key == "combined:request:1:1+request:5:1+reminder:9:1:1"
    single = batch_for_person([_due(1, 1)], NOW, POLICY, [])
    assert single.send is not None and single.send.kind == "feedback_request"


def test_a_capped_person_waits_and_requests_stay_together() -> None:
    p = replace(POLICY, party_weekly_cap=2)
    history = [NOW - timedelta(days=2), NOW - timedelta(days=1)]
    batch = batch_for_person([_due(1, 1), _due(5, 3)], NOW, p, history)
    assert batch == Batch(NOW + timedelta(days=5), batch.steps, None)
    # steps without mail (giving up after the last reminder) are never held
    quiet = batch_for_person([_due(7, 2, PartyStatus.REQUESTED, reminders_sent=1)], NOW, p,
                             history)
    assert quiet.hold_until is None and quiet.send is None


def test_never_a_reminder_after_any_answer() -> None:
    # they said "not yet", we asked again (recheck): no reminder for that round
    step = due_step(state(PartyStatus.REQUESTED, rounds=2, requests_sent=2, answered=True),
                    NOW, POLICY)
    assert step.sends == () and step.status is PartyStatus.NORESPONSE
    first = due_step(state(PartyStatus.REQUESTED, rounds=1, requests_sent=1), NOW, POLICY)
    assert [m.kind for m in first.sends] == ["reminder"] and first.sends[0].facts["last"]


def test_retry_delay_backs_off_with_jitter_and_gives_up() -> None:
    low = [retry_delay(n, 0.0) for n in range(1, 6)]
    high = [retry_delay(n, 0.999) for n in range(1, 6)]
    assert low == [timedelta(seconds=30) * 2 ** i for i in range(5)]  # half of 1, 2, 4... min
    assert all(h > lo for h, lo in zip(high, low, strict=True))
    assert retry_delay(12, 1.0) == timedelta(hours=6)  # capped
    assert retry_delay(MAX_SEND_ATTEMPTS, 0.5) is None
    assert len({retry_delay(3, r / 10) for r in range(10)}) == 10  # jitter spreads retries


def test_time_travel_through_quiet_hours_with_time_machine() -> None:
    import time_machine

    from service.app import SystemClock

    p = replace_policy()
    with time_machine.travel(datetime(2026, 10, 24, 19, 30, tzinfo=UTC), tick=False):
        now = SystemClock().now()
        assert in_quiet_hours(now, p)
        assert next_sendable(now, p) == datetime(2026, 10, 25, 7, 0, tzinfo=UTC)

