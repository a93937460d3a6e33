"""Monthly summaries on a seeded database: every section, timezones, once and only once.

The database is seeded row by row (no conversation needed), so each section of the member's and
the operator's summary has something to show. The scheduler's tick (`queue_monthly_summaries`
+ `flush_outbox`) runs under a FrozenClock moved hour by hour across the 1st; outgoing mail
goes to the local .eml transport.
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlmodel import Session, select

from service.adapters.tables import (
    Member,
    Outbox,
    Party,
    Referral,
    Reply,
    SummaryLog,
    Suppression,
)
from service.app import FrozenClock, build_loop
from service.cli import main
from service.config import load_settings
from service.core.summary import Month
from service.loop import Loop
from service.queries import add_member

OCT = Month(2026, 10)
NETWORK = {
    "address": "referrals@network.example", "network_name": "Test Network",
    "operator": "ops@network.example", "secret": "x" * 32, "database_url": None,
    "imap_host": None, "smtp_host": None, "feedback_delay": "3d", "reminder_delay": "4d",
    "max_reminders": 1, "pending_recheck": "14d", "timezone": "UTC", "quiet_hours": "",
    "allow_senders": "", "summary_hour": 9, "summary_empty": "skip",
}
# Members and their timezones: Berlin (October ends an hour later in UTC after summer time),
# Auckland (the 1st starts half a day earlier), Los Angeles (the 31st ends 7-8 hours later),
# and the network's UTC for Dave and Gina. Gina does nothing.
MEMBERS = [
    ("alice@example.com", "Alice Martin", "Europe/Berlin", ("alice.home@example.org",)),
    ("dave@example.com", "Dave Okafor", None, ()),
    ("erin@example.com", "Erin Walsh", "Pacific/Auckland", ()),
    ("frank@example.com", "Frank Li", "America/Los_Angeles", ()),
    ("gina@example.com", "Gina Rossi", None, ()),
]
# When each member's October summary is due, in UTC
DUE = {
    "erin@example.com": datetime(2026, 10, 31, 20, tzinfo=UTC),  # 1 Nov 09:00 NZDT
    "alice@example.com": datetime(2026, 11, 1, 8, tzinfo=UTC),  # 09:00 CET
    "dave@example.com": datetime(2026, 11, 1, 9, tzinfo=UTC),
    "frank@example.com": datetime(2026, 11, 1, 17, tzinfo=UTC),  # 09:00 PST (DST ended)
}


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def make_settings(tmp: Path, **over: Any):
    return load_settings(None, {**NETWORK, "data_dir": tmp, **over})


def add_referral(s: Session, referrer: str, name: str, when: datetime,
                 parties: list[dict[str, Any]], status: str = "open") -> int:
    """One referral; each party: email, name, outcome, at, text, asked, status."""
    r = Referral(referrer_email=referrer, referrer_name=name, subject="Intro",
                 intro_key=uuid.uuid4().hex, introduced_at=when, status=status)
    s.add(r)
    s.flush()
    for p in parties:
        row = Party(referral_id=r.id, email=p["email"], name=p.get("name", ""),
                    status=p.get("status", "answered" if p.get("outcome") else "requested"),
                    outcome=p.get("outcome"), outcome_at=p.get("at"))
        s.add(row)
        s.flush()
        asked = p.get("asked", when + timedelta(days=3))
        if asked is not None:
            s.add(Outbox(key=f"request:{row.id}:1", kind="feedback_request", to_email=p["email"],
                         message_id=f"req-{row.id}@network.example", raw=b"x", party_id=row.id,
                         referral_id=r.id, status="sent", sent_at=asked, next_attempt_at=asked))
        if p.get("text"):
            s.add(Reply(party_id=row.id, inbound_id=0, from_email=p["email"], text=p["text"],
                        outcome=p.get("reply_outcome", p.get("outcome"))))
    assert r.id is not None
    return r.id


def seed(loop: Loop) -> None:
    """A month with something for every section of both summaries."""
    for email, name, tz, aliases in MEMBERS:
        add_member(loop.settings, email, name, tz, aliases)
    A = ("alice@example.com", "Alice Martin")
    with loop.session() as s:
        add_referral(s, *A, at(2026, 10, 5, 10), [
            {"email": "bob@acme.example", "name": "Bob Chen", "outcome": "positive",
             "at": at(2026, 10, 9), "text": "Hi Alice,\n\nIt went really well, we signed a "
             "contract!\n\nThanks,\nBob"},
            {"email": "carol@studio.example", "name": "Carol Diaz", "outcome": "positive",
             "at": at(2026, 10, 10), "text": "Great match, thank you so much."}])
        add_referral(s, *A, at(2026, 10, 6, 10), [  # the two sides disagree
            {"email": "dan@x.example", "name": "Dan", "outcome": "positive",
             "at": at(2026, 10, 12), "text": "Useful chat, we will meet again."},
            {"email": "eve@y.example", "name": "Eve", "outcome": "negative",
             "at": at(2026, 10, 12), "text": "Not a fit for our stage right now."}])
        add_referral(s, *A, at(2026, 10, 7, 10), [
            {"email": "fay@z.example", "name": "Fay", "outcome": "negative",
             "at": at(2026, 10, 14), "text": "Nice people, but there is no budget this year."},
            {"email": "gus@z.example", "name": "Gus", "status": "noresponse"}])
        # 31 Oct 23:30 in Berlin: October for Alice
        add_referral(s, *A, at(2026, 10, 31, 22, 30), [
            {"email": "hal@h.example", "name": "Hal", "status": "scheduled", "asked": None},
            {"email": "ivy@i.example", "name": "Ivy", "status": "unclear", "outcome": "unclear",
             "at": at(2026, 10, 31, 22, 45), "text": "hmm, who is this?", "asked": None}])
        # 1 Nov 00:30 in Berlin (CET): November, not in Alice's October
        add_referral(s, *A, at(2026, 10, 31, 23, 30), [
            {"email": "jay@j.example", "name": "Jay", "status": "scheduled", "asked": None},
            {"email": "kay@k.example", "name": "Kay", "status": "scheduled", "asked": None}])
        add_referral(s, *A, at(2026, 9, 20), [  # still open from September
            {"email": "jo@j.example", "name": "Jo", "outcome": "pending", "status": "pending",
             "at": at(2026, 9, 28), "text": "Not yet, next week."},
            {"email": "kim@k.example", "name": "Kim"}])
        for month, outcome in ((6, "negative"), (7, "negative"), (8, "positive"),
                               (8, "negative")):
            add_referral(s, *A, at(2026, month, 1), [
                {"email": f"p{month}@old.example", "outcome": outcome,
                 "at": at(2026, month, 9)},
                {"email": f"q{month}@old.example", "status": "noresponse"}])
        # cancelled by Alice: appears nowhere
        add_referral(s, *A, at(2026, 10, 8), [{"email": "t@t.example"},
                                              {"email": "u@u.example"}], status="cancelled")
        # Dave introduces Alice (at her other address) to Zoe
        add_referral(s, "dave@example.com", "Dave Okafor", at(2026, 10, 15), [
            {"email": "alice.home@example.org", "name": "Alice Martin", "outcome": "positive",
             "at": at(2026, 10, 20), "text": "Thanks Dave, great intro."},
            {"email": "zoe@zed.example", "name": "Zoe"}])
        add_referral(s, "erin@example.com", "Erin Walsh", at(2026, 10, 15), [
            {"email": "lou@l.example", "name": "Lou"}, {"email": "zoe@zed.example", "name": "Zoe"}])
        # 31 Oct 20:00 in Los Angeles: October for Frank
        add_referral(s, "frank@example.com", "Frank Li", at(2026, 11, 1, 3), [
            {"email": "ned@n.example", "asked": None, "status": "scheduled"},
            {"email": "oli@o.example", "asked": None, "status": "scheduled"}])
        s.add(Suppression(email="x@gone.example", reason="bounce", detail="550 user unknown",
                          created_at=at(2026, 10, 3)))
        s.add(Suppression(email="y@no.example", reason="optout", detail="reply",
                          created_at=at(2026, 10, 4)))
        s.add(Outbox(key="reminder:99:1", kind="reminder", to_email="zoe@zed.example",
                     message_id="rem-99@network.example", raw=b"x", status="failed", attempts=3,
                     last_error="550 5.1.1 <zoe@zed.example>: Recipient address rejected",
                     next_attempt_at=at(2026, 10, 20)))


@pytest.fixture
def world(tmp_path: Path) -> tuple[Loop, FrozenClock]:
    clock = FrozenClock(at(2026, 10, 28))
    loop = build_loop(make_settings(tmp_path), clock=clock)
    seed(loop)
    return loop, clock


def tick(loop: Loop, clock: FrozenClock, when: datetime) -> list[tuple[str, str]]:
    """One scheduler tick at `when`: queue what is due, send the outbox."""
    clock.current = when
    loop.queue_monthly_summaries()
    return [(kind, to) for kind, to, _ in loop.flush_outbox().sent]


def summaries_sent(loop: Loop) -> list[tuple[str, str, str]]:
    with loop.session() as s:
        return [(o.kind, o.to_email, o.key) for o in s.exec(select(Outbox).where(
            sa.or_(Outbox.kind == "monthly_summary", Outbox.kind == "network_summary"))
            .order_by(Outbox.id))]


def text_and_html(raw: bytes) -> tuple[str, str]:
    msg = message_from_bytes(raw, policy=policy.default)
    return msg.get_body(("plain",)).get_content(), msg.get_body(("html",)).get_content()


# ------------------------------------------------------------------------------ sections


def test_alices_october_has_every_section(world) -> None:
    loop, _ = world
    (s,) = loop.summaries(OCT, "alice@example.com")
    assert s.timezone == "Europe/Berlin"
    assert len(s.passed) == 4  # the intro at 00:30 CET on 1 November is not October's
    assert [a.state for a in s.passed[3].answers] == ["no_answer", "reviewing"]
    first = s.passed[0]
    assert [(a.name, a.state, a.quote) for a in first.answers] == [
        ("Bob Chen", "worked", "It went really well, we signed a contract!"),
        ("Carol Diaz", "worked", "Great match, thank you so much.")]
    assert s.passed[1].outcome == "mixed" and s.counts["mixed"] == 1
    assert [a.state for a in s.passed[2].answers] == ["did_not", "no_response"]
    assert [r.names for r in s.still_open] == ["Jo and Kim"]
    assert (s.rate.good, s.rate.total) == (1, 2) and s.trend == "up"
    assert s.thanks_received == 3
    assert [x.title for x in s.lessons] == ["Budget got in the way",
                                           "The fit was not quite there"]
    (received,) = s.received
    assert received.referrer.email == "dave@example.com" and received.others == "Zoe"
    assert received.answer.state == "worked"

    (preview,) = loop.summary_previews(OCT, member="alice@example.com")
    text, html = preview.rendered.text, preview.rendered.html
    assert preview.rendered.subject == "Your October: 4 introductions, 3 people say it worked"
    for needle in ("Thank you for the 4 introductions you made in October 2026",
                   '"It went really well, we signed a contract!"',
                   "Bob Chen, about meeting Carol Diaz",
                   "the two sides see it differently",
                   "Dave Okafor introduced you to Zoe", "a short thank-you to Dave",
                   "STILL OPEN FROM EARLIER", "Jo and Kim",
                   "Budget got in the way", '"Nice people, but there is no budget this year."',
                   "1 of 2 decided worked (50%), better than the months before",
                   "YOUR LAST 12 MONTHS", "Oct 2026  #x~."):
        assert needle in text, needle
    assert "hmm, who is this" not in text  # unclear replies are not quoted
    assert "Jay" not in text and "t@t.example" not in text
    assert 'bgcolor="#0b6e4f"' in html and "mailto:dave@example.com?subject=Thank" in html
    assert "<img" not in html and "<svg" not in html and "<script" not in html


def test_network_october_has_every_section(world) -> None:
    loop, _ = world
    (preview,) = loop.summary_previews(OCT, network=True)
    s = preview.summary
    assert preview.to == "ops@network.example"
    # in the network's UTC, Frank's intro (1 Nov 03:00) is November's
    assert s.counts["referrals"] == 7 and s.counts["referrers"] == 3
    assert s.top_referrers[0].email == "alice@example.com" and s.top_referrers[0].count == 5
    assert s.unclear_total == 1 and s.delivery_total == 1
    assert (s.counts["bounced"], s.counts["opted_out"]) == (1, 1)
    text = preview.rendered.text
    for needle in ("Test Network in October 2026", "Answer rate:", "NEEDS YOU",
                   "Replies waiting for a person: 1", '"hmm, who is this?"',
                   "Delivery problems: 1", "550 5.1.1", "WHO INTRODUCED MOST",
                   "1. Alice Martin: 5", "WHO WAS INTRODUCED MOST", "1. Zoe: 2",
                   "UNANSWERED REQUESTS",
                   "x@gone.example: bounced", "y@no.example: opted out", "LAST 12 MONTHS"):
        assert needle in text, needle
    assert preview.rendered.subject.endswith("2 need you")


# ------------------------------------------------------------------------------ scheduling


def test_each_member_gets_one_summary_on_the_first_in_their_timezone(world) -> None:
    loop, clock = world
    # the first tick of the service: Alice's September (and the network's) had not been sent
    assert tick(loop, clock, at(2026, 10, 28)) == [("network_summary", "ops@network.example"),
                                                   ("monthly_summary", "alice@example.com")]
    sent: dict[datetime, list[tuple[str, str]]] = {}
    t = at(2026, 10, 31, 12)
    while t <= at(2026, 11, 2, 12):
        if got := tick(loop, clock, t):
            sent[t] = got
        t += timedelta(minutes=30)
    assert sent == {
        DUE["erin@example.com"]: [("monthly_summary", "erin@example.com")],
        DUE["alice@example.com"]: [("monthly_summary", "alice@example.com")],
        DUE["dave@example.com"]: [("network_summary", "ops@network.example"),
                                  ("monthly_summary", "dave@example.com")],
        DUE["frank@example.com"]: [("monthly_summary", "frank@example.com")],
    }
    with loop.session() as s:
        log = {(x.kind, x.recipient, x.month): x.status for x in s.exec(select(SummaryLog))}
    assert log[("member", "gina@example.com", "2026-10")] == "empty"
    assert log[("member", "alice@example.com", "2026-10")] == "queued"
    assert log[("network", "ops@network.example", "2026-10")] == "queued"
    # Frank's intro on 31 October in Los Angeles is in his October summary
    frank = next(o for o in summaries_sent(loop) if o[1] == "frank@example.com")
    assert frank[2] == "summary:frank@example.com:2026-10"


def test_never_twice_across_restarts_repeats_and_the_cli(world, tmp_path: Path) -> None:
    loop, clock = world
    tick(loop, clock, at(2026, 11, 1, 18))
    first = summaries_sent(loop)
    assert len(first) == 5
    # a restart: a new Loop on the same database, and more ticks later in the month
    again = build_loop(loop.settings, clock=clock)
    for hours in (0, 1, 24, 24 * 10):
        assert tick(again, clock, at(2026, 11, 1, 18) + timedelta(hours=hours)) == []
    assert again.queue_summaries(OCT).queued == []
    assert again.queue_network_summary(OCT).queued == []
    assert summaries_sent(again) == first


def test_a_missed_first_is_sent_late_once(world) -> None:
    loop, clock = world
    tick(loop, clock, at(2026, 10, 28))  # September's summaries
    # the service was down from 28 October to 9 November
    late = tick(loop, clock, at(2026, 11, 9, 14))
    assert sorted(late) == sorted([("monthly_summary", e) for e in DUE] +
                                  [("network_summary", "ops@network.example")])
    assert tick(loop, clock, at(2026, 11, 9, 15)) == []
    assert tick(loop, clock, at(2026, 12, 1, 7)) == []  # October done; November not due yet
    # 09:00 in Berlin: Alice's November (her intro of 1 November 00:30 CET) is due
    assert tick(loop, clock, at(2026, 12, 1, 8)) == [("monthly_summary", "alice@example.com")]


def test_empty_months_can_be_sent_when_configured(tmp_path: Path) -> None:
    clock = FrozenClock(at(2026, 11, 1, 10))
    loop = build_loop(make_settings(tmp_path, summary_empty="send"), clock=clock)
    add_member(loop.settings, "gina@example.com", "Gina Rossi", None, ())
    assert tick(loop, clock, at(2026, 11, 1, 10)) == [("network_summary", "ops@network.example"),
                                                        ("monthly_summary", "gina@example.com")]
    with loop.session() as s:
        row = s.exec(select(Outbox).where(Outbox.to_email == "gina@example.com")).one()
    text, _ = text_and_html(row.raw)
    assert row.subject == "Your October in Test Network" and "quiet month" in text


def test_a_big_first_is_spread_over_ticks(world) -> None:
    loop, clock = world
    loop.summaries_per_tick = 2
    sent = [tick(loop, clock, at(2026, 11, 1, 18) + timedelta(minutes=n)) for n in range(4)]
    # the network's first, then two members a tick (Gina's "empty" takes the third tick's place)
    assert [len(x) for x in sent] == [3, 2, 0, 0]
    assert len(summaries_sent(loop)) == 5


def test_suppressed_members_get_no_summary(world) -> None:
    loop, clock = world
    with loop.session() as s:
        s.add(Suppression(email="dave@example.com", reason="bounce", created_at=at(2026, 10, 29)))
    tick(loop, clock, at(2026, 11, 1, 18))
    assert "dave@example.com" not in [to for _, to, _ in summaries_sent(loop)]
    with loop.session() as s:
        row = s.exec(select(SummaryLog).where(SummaryLog.recipient == "dave@example.com")).one()
    assert row.status == "suppressed"


def test_the_tick_is_cheap_once_the_month_is_done(world) -> None:
    loop, clock = world
    tick(loop, clock, at(2026, 11, 1, 18))
    with loop.session() as s:  # many more members, all dealt with
        for n in range(300):
            s.add(Member(email=f"m{n}@example.com", name=f"M {n}"))
            s.add(SummaryLog(kind="member", recipient=f"m{n}@example.com", month="2026-10",
                             status="empty", created_at=at(2026, 11, 1, 9)))
    statements: list[str] = []

    def count(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement)

    sa.event.listen(loop.engine, "before_cursor_execute", count)
    try:
        clock.current = at(2026, 11, 1, 19)
        assert loop.queue_monthly_summaries().queued == []
    finally:
        sa.event.remove(loop.engine, "before_cursor_execute", count)
    reads = [x for x in statements if x.lstrip().upper().startswith("SELECT")]
    # one read of the members and one of summary_log: no referral is looked at
    assert len(reads) == 2, statements
    assert not any("referral" in x.lower() for x in reads)


def race(loop: Loop, clock: FrozenClock) -> None:
    """Four workers on the same database run the same tick at the same moment."""
    clock.current = at(2026, 11, 1, 18)
    workers = [build_loop(loop.settings, clock=clock) for _ in range(4)]
    barrier = threading.Barrier(len(workers))
    errors: list[BaseException] = []

    def work(w: Loop) -> None:
        try:
            barrier.wait()
            w.queue_monthly_summaries()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    keys = [k for _, _, k in summaries_sent(loop)]
    assert len(keys) == len(set(keys)) == 5
    with loop.session() as s:
        assert len(s.exec(select(SummaryLog)).all()) == 6  # Gina's "empty" too


def test_workers_racing_on_sqlite_send_one_summary_each(world) -> None:
    race(*world)


@pytest.mark.servers
def test_workers_racing_on_postgresql_send_one_summary_each(pg_url: str, tmp_path: Path) -> None:
    clock = FrozenClock(at(2026, 10, 28))
    loop = build_loop(make_settings(tmp_path, database_url=pg_url), clock=clock)
    seed(loop)
    race(loop, clock)


# ------------------------------------------------------------------------------ CLI


def cli(env: dict[str, str], *args: str) -> str:
    result = CliRunner().invoke(main, ["--env-file", "/nonexistent/.env", *args], env=env)
    assert result.exit_code == 0, result.output
    return result.output


def cli_env(loop: Loop) -> dict[str, str]:
    return {"INTROLOOP_ADDRESS": "referrals@network.example", "INTROLOOP_SECRET": "x" * 32,
            "INTROLOOP_NETWORK_NAME": "Test Network", "INTROLOOP_OPERATOR": "ops@network.example",
            "INTROLOOP_DATA_DIR": str(loop.settings.data_dir), "INTROLOOP_TIMEZONE": "UTC"}


def test_cli_previews_exports_and_sends_once(world, tmp_path: Path) -> None:
    loop, _ = world
    env = cli_env(loop)
    data = json.loads(cli(env, "summary", "--month", "2026-10", "--json"))
    assert sorted(d["to"] for d in data) == sorted(DUE)  # Gina has nothing to report
    alice = next(d for d in data if d["to"] == "alice@example.com")
    assert alice["would_send"] and alice["counts"]["passed"] == 4
    network = json.loads(cli(env, "summary", "--month", "2026-10", "--network", "--json"))
    assert network[0]["counts"]["referrals"] == 7 and network[0]["unclear_total"] == 1
    page = tmp_path / "alice.html"
    out = cli(env, "summary", "--month", "2026-10", "--member", "alice@example.com",
              "--html", str(page))
    assert "(would send)" in out and "<table" in page.read_text()
    gina = cli(env, "summary", "--month", "2026-10", "--member", "gina@example.com")
    assert "nothing to report, not sent" in gina
    cli(env, "summary", "--month", "2026-10", "--send", "--dry-run")
    assert summaries_sent(loop) == []
    sent = json.loads(cli(env, "summary", "--month", "2026-10", "--send", "--json"))
    assert len(sent["sent"]) == 4
    assert json.loads(cli(env, "summary", "--month", "2026-10", "--send", "--json"))["sent"] == []
    assert "(already queued)" in cli(env, "summary", "--month", "2026-10", "--member",
                                     "alice@example.com")
    bad = CliRunner().invoke(main, ["--env-file", "/nonexistent", "summary", "--month", "10/2026"],
                             env=env)
    assert bad.exit_code != 0 and "YYYY-MM" in bad.output and "Traceback" not in bad.output
