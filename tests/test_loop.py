"""The whole loop on the embedded transport (Maildir in, .eml out) with a frozen clock.

A conversation test: an intro goes in, requests come out, replies go in, the right thanks,
appreciation and lessons come out, and nothing is ever sent twice.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from sqlmodel import select

from service.adapters.local import MaildirMailbox
from service.adapters.tables import Inbound, Outbox, Party, Reply, Suppression
from service.app import FrozenClock, build_loop
from service.config import load_settings
from service.core.summary import Month
from service.loop import Loop
from service.queries import add_member

START = datetime(2026, 10, 5, 9, 0, tzinfo=UTC)
INTRO = """From: Alice Martin <alice@example.com>
To: Bob Chen <bob@acme.example>, Carol <carol@studio.example>
Subject: Intro: Bob <> Carol
Date: Mon, 05 Oct 2026 09:00:00 +0000
Message-ID: <intro-{n}@example.com>
Content-Type: text/plain; charset="utf-8"

Bob, meet Carol.
"""


def settings(tmp: Path, **over):
    values = {
        "address": "referrals@network.example", "network_name": "Test Network",
        "operator": "ops@network.example", "secret": "x" * 32, "data_dir": tmp,
        "database_url": None, "imap_host": None, "smtp_host": None,
        "feedback_delay": "3d", "reminder_delay": "4d", "max_reminders": 1,
        "pending_recheck": "14d", "timezone": "UTC", "quiet_hours": "", "allow_senders": "",
    }
    values.update(over)
    return load_settings(None, values)


@pytest.fixture
def world(tmp_path: Path):
    st = settings(tmp_path)
    clock = FrozenClock(START)
    loop = build_loop(st, clock=clock)
    add_member(st, "alice@example.com", "Alice Martin", None, ())
    return loop, clock


def deliver(loop: Loop, raw: str) -> None:
    assert isinstance(loop.mailbox, MaildirMailbox)
    loop.mailbox.deliver(raw.replace("\n", "\r\n").encode())


def outbox(loop: Loop) -> list[Outbox]:
    with loop.session() as s:
        return list(s.exec(select(Outbox).order_by(Outbox.id)))


def request_to(loop: Loop, email: str) -> Outbox:
    return next(o for o in reversed(outbox(loop)) if o.to_email == email
                and o.kind in ("feedback_request", "recheck", "reminder"))


def reply(loop: Loop, to_row: Outbox, sender: str, text: str, n: int = 0, **extra: str) -> str:
    msg = message_from_bytes(to_row.raw, policy=policy.default)
    headers = {"From": sender, "To": str(msg["Reply-To"]), "Subject": "Re: " + to_row.subject,
               "Message-ID": f"<r{n}-{to_row.id}@reply.example>",
               "In-Reply-To": f"<{to_row.message_id}>", **extra}
    head = "".join(f"{k}: {v}\n" for k, v in headers.items())
    quoted = "\n".join("> " + line for line in msg.get_body(("plain",)).get_content().splitlines())
    return (f"{head}Content-Type: text/plain; charset=utf-8\n\n{text}\n\n"
            f"On Monday, Test Network wrote:\n{quoted}\n")


def sent_kinds(loop: Loop) -> list[tuple[str, str]]:
    return [(o.kind, o.to_email) for o in outbox(loop) if o.status == "sent"]


def test_full_conversation(world) -> None:
    loop, clock = world
    deliver(loop, INTRO.format(n=1))
    r = loop.run_once()
    assert [k for _, k, _ in r.processed] == ["intro"]
    assert r.sent == []  # the feedback delay has not passed

    clock.advance(timedelta(days=3))
    loop.run_once()
    assert sorted(sent_kinds(loop)) == [("feedback_request", "bob@acme.example"),
                                        ("feedback_request", "carol@studio.example")]
    # the request threads under the intro and carries the party's token and an unsubscribe
    req = message_from_bytes(request_to(loop, "bob@acme.example").raw, policy=policy.default)
    assert req["References"] == "<intro-1@example.com>"
    assert str(req["Reply-To"]).startswith("referrals+")
    assert req["List-Unsubscribe"].startswith("<mailto:referrals+")
    assert req["Auto-Submitted"] == "auto-generated"

    clock.advance(timedelta(hours=2))
    deliver(loop, reply(loop, request_to(loop, "bob@acme.example"), "Bob Chen <bob@acme.example>",
                        "It went really well, we signed a contract!"))
    deliver(loop, reply(loop, request_to(loop, "carol@studio.example"), "carol@studio.example",
                        "Nice guy, but no budget this year, so it did not work out."))
    loop.run_once()
    assert sorted(sent_kinds(loop))[2:] == sorted([
        ("thanks_positive", "bob@acme.example"), ("appreciation", "alice@example.com"),
        ("thanks_negative", "carol@studio.example"), ("lessons", "alice@example.com"),
    ]) or set(sent_kinds(loop)) >= {
        ("thanks_positive", "bob@acme.example"), ("appreciation", "alice@example.com"),
        ("thanks_negative", "carol@studio.example"), ("lessons", "alice@example.com")}
    appreciation = next(o for o in outbox(loop) if o.kind == "appreciation")
    body = message_from_bytes(appreciation.raw, policy=policy.default)
    assert "we signed a contract" in body.get_body(("plain",)).get_content()
    lessons = next(o for o in outbox(loop) if o.kind == "lessons")
    text = message_from_bytes(lessons.raw, policy=policy.default).get_body(("plain",)).get_content()
    assert "no budget" in text and "Not every referral lands" in text

    before = len(outbox(loop))
    for _ in range(3):
        clock.advance(timedelta(days=5))
        loop.run_once()
    assert len(outbox(loop)) == before  # answered parties get no reminders, nothing twice


def test_words_in_the_quoted_request_do_not_decide(world) -> None:
    loop, clock = world
    deliver(loop, INTRO.format(n=2))
    loop.run_once()
    clock.advance(timedelta(days=3))
    loop.run_once()
    # "it went well" appears only in the quoted request's one-click links: not an answer
    deliver(loop, reply(loop, request_to(loop, "bob@acme.example"), "bob@acme.example",
                        "Who are you?"))
    loop.run_once()
    with loop.session() as s:
        r = s.exec(select(Reply)).one()
    assert r.outcome == "unclear"
    assert ("unclear_review", "ops@network.example") in sent_kinds(loop)


def test_reminder_then_no_response_and_autoreply_ignored(world) -> None:
    loop, clock = world
    deliver(loop, INTRO.format(n=3))
    loop.run_once()
    clock.advance(timedelta(days=3))
    loop.run_once()
    req = request_to(loop, "bob@acme.example")
    ooo = reply(loop, req, "bob@acme.example", "I am out of the office until Monday.",
                **{"Auto-Submitted": "auto-replied", "Subject": "Automatic reply: hi"})
    deliver(loop, ooo)
    r = loop.run_once()
    assert [k for _, k, _ in r.processed] == ["autoreply"] and r.sent == []
    clock.advance(timedelta(days=4))
    r = loop.run_once()
    assert sorted(k for k, _, _ in r.sent) == ["reminder", "reminder"]
    clock.advance(timedelta(days=4))
    r = loop.run_once()
    assert r.sent == []
    with loop.session() as s:
        assert {p.status for p in s.exec(select(Party))} == {"noresponse"}


def test_one_click_optout_is_forever(world) -> None:
    loop, clock = world
    deliver(loop, INTRO.format(n=4))
    loop.run_once()
    clock.advance(timedelta(days=3))
    loop.run_once()
    req = message_from_bytes(request_to(loop, "bob@acme.example").raw, policy=policy.default)
    stop_addr = str(req["List-Unsubscribe"]).split("mailto:")[1].split("?")[0]
    deliver(loop, f"From: bob@acme.example\nTo: {stop_addr}\nSubject: stop\n"
                  "Message-ID: <stop-1@acme.example>\n\n")
    loop.run_once()
    with loop.session() as s:
        assert s.get(Suppression, "bob@acme.example").reason == "optout"
    assert ("optout_confirmation", "bob@acme.example") in sent_kinds(loop)
    # a new intro involving Bob never mails him again
    deliver(loop, INTRO.format(n=5))
    for _ in range(4):
        clock.advance(timedelta(days=3))
        loop.run_once()
    to_bob = [k for k, to in sent_kinds(loop) if to == "bob@acme.example"]
    assert to_bob == ["feedback_request", "optout_confirmation"]


def test_a_spam_complaint_about_a_request_stops_all_mail_to_the_complainant(world) -> None:
    loop, clock = world
    deliver(loop, INTRO.format(n=6))
    loop.run_once()
    clock.advance(timedelta(days=3))
    loop.run_once()
    request = request_to(loop, "bob@acme.example")
    original = request.raw.decode("utf-8", "replace").split("\r\n\r\n", 1)[0]
    deliver(loop, "From: Feedback Loop <fbl@isp.example>\nTo: referrals@network.example\n"
                  "Subject: Abuse report\nMessage-ID: <arf-1@isp.example>\nMIME-Version: 1.0\n"
                  'Content-Type: multipart/report; report-type=feedback-report; boundary="f"\n\n'
                  "--f\nContent-Type: text/plain\n\nA user reported this message as spam.\n\n"
                  "--f\nContent-Type: message/feedback-report\n\nFeedback-Type: abuse\n"
                  "Version: 1\n\n--f\nContent-Type: text/rfc822-headers\n\n"
                  + original.replace("\r\n", "\n") + "\n\n--f--\n")
    r = loop.run_once()
    assert [k for _, k, _ in r.processed] == ["ignored"]
    with loop.session() as s:
        assert s.get(Suppression, "bob@acme.example").reason == "complaint"
        assert {p.email: p.status for p in s.exec(select(Party))}["bob@acme.example"] == "optedout"
    # no reminder, no confirmation, nothing from a new intro either: a complaint is forever
    deliver(loop, INTRO.format(n=7))
    for _ in range(4):
        clock.advance(timedelta(days=3))
        loop.run_once()
    assert [k for k, to in sent_kinds(loop) if to == "bob@acme.example"] == ["feedback_request"]
    assert ("reminder", "carol@studio.example") in sent_kinds(loop)  # Carol is still asked


def test_same_intro_twice_is_one_referral_and_duplicates_are_skipped(world) -> None:
    loop, _ = world
    deliver(loop, INTRO.format(n=6))
    deliver(loop, INTRO.format(n=6))  # the same bytes twice (a re-sync)
    deliver(loop, INTRO.format(n=6).replace("Subject:", "X-Extra: 1\nSubject:"))  # same id
    r = loop.run_once()
    assert r.fetched == 3
    assert [k for _, k, _ in r.processed] == ["intro", "ignored"]
    with loop.session() as s:
        assert len(s.exec(select(Inbound)).all()) == 2


def test_quarantine_keeps_going(world, monkeypatch) -> None:
    loop, _ = world
    real = loop.classify

    def broken(text: str):
        if "explode" in text:
            raise RuntimeError("classifier exploded")
        return real(text)

    loop.classify = broken
    deliver(loop, "From: x@y.example\nTo: referrals@network.example\nSubject: hi\n"
                  "Message-ID: <q1@y.example>\n\nexplode please\n")
    deliver(loop, INTRO.format(n=7))
    r = loop.run_once()
    assert [k for _, k, _ in r.processed] == ["quarantined", "intro"]
    with loop.session() as s:
        q = s.exec(select(Inbound).where(Inbound.status == "quarantined")).one()
    assert "classifier exploded" in q.reason and q.raw.startswith(b"From: x@y.example")


def test_monthly_summary_sent_once(world) -> None:
    loop, clock = world
    deliver(loop, INTRO.format(n=8))
    loop.run_once()
    clock.advance(timedelta(days=3))
    loop.run_once()
    deliver(loop, reply(loop, request_to(loop, "bob@acme.example"), "bob@acme.example",
                        "Yes! Great call.", n=1))
    loop.run_once()
    clock.current = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)  # before the summary hour
    assert not [k for k, _, _ in loop.run_once().sent if k == "monthly_summary"]
    clock.current = datetime(2026, 11, 1, 9, 30, tzinfo=UTC)
    sent = [k for k, _, _ in loop.run_once().sent]
    assert sent.count("monthly_summary") == 1
    clock.advance(timedelta(hours=5))
    assert "monthly_summary" not in [k for k, _, _ in loop.run_once().sent]
    assert loop.queue_summaries(Month(2026, 10)).queued == []  # --send again: still once
    summary = next(o for o in outbox(loop) if o.kind == "monthly_summary")
    text = message_from_bytes(summary.raw, policy=policy.default).get_body(("plain",)).get_content()
    assert "October 2026" in text and "worked" in text


def test_unclear_replies_can_go_to_the_referrer(tmp_path: Path) -> None:
    st = settings(tmp_path, unclear_to="referrer", feedback_delay="0s")
    loop = build_loop(st, clock=FrozenClock(START))
    add_member(st, "alice@example.com", "Alice Martin", None, ())
    deliver(loop, INTRO.format(n=9))
    loop.run_once()
    deliver(loop, reply(loop, request_to(loop, "bob@acme.example"), "bob@acme.example",
                        "Who are you?"))
    loop.run_once()
    assert ("unclear_review", "alice@example.com") in sent_kinds(loop)
    review = next(o for o in outbox(loop) if o.kind == "unclear_review")
    # the referrer settles it by replying with one word, exactly like an operator
    msg = message_from_bytes(review.raw, policy=policy.default)
    deliver(loop, f"From: alice@example.com\nTo: {msg['Reply-To']}\nSubject: Re: x\n"
                  f"Message-ID: <verdict-9@example.com>\n\nnegative\n")
    r = loop.run_once()
    assert "settled as negative" in r.processed[0][2]
    assert ("lessons", "alice@example.com") in sent_kinds(loop)


def test_a_forged_from_is_not_matched_by_sender(tmp_path: Path) -> None:
    st = settings(tmp_path, feedback_delay="0s", trusted_authserv_id="mx.network.example")
    loop = build_loop(st, clock=FrozenClock(START))
    add_member(st, "alice@example.com", "Alice Martin", None, ())
    deliver(loop, INTRO.format(n=10))
    loop.run_once()
    # no token, no reference: only the From names Bob, and our server says it is forged
    forged = ("From: bob@acme.example\nTo: referrals@network.example\nSubject: hi\n"
              "Authentication-Results: mx.network.example; dmarc=fail header.from=acme.example;"
              " spf=fail smtp.mailfrom=acme.example\nMessage-ID: <forged-1@evil.example>\n\n"
              "Yes, it went great!\n")
    deliver(loop, forged)
    r = loop.run_once()
    assert "names no request" in r.processed[0][2] and r.sent == []
    with loop.session() as s:
        assert s.exec(select(Reply)).all() == []


def test_cancel_by_replying_to_the_confirmation_without_its_token(tmp_path: Path) -> None:
    st = settings(tmp_path, confirm_intros=True)
    loop = build_loop(st, clock=FrozenClock(START))
    add_member(st, "alice@example.com", "Alice Martin", None, ())
    deliver(loop, INTRO.format(n=11))
    loop.run_once()
    confirmation = next(o for o in outbox(loop) if o.kind == "intro_confirmation")
    # the member's client answered to the plain service address, but threaded
    deliver(loop, "From: alice@example.com\nTo: referrals@network.example\nSubject: Re: x\n"
                  f"In-Reply-To: <{confirmation.message_id}>\n"
                  "Message-ID: <cancel-11@example.com>\n\ncancel\n")
    r = loop.run_once()
    assert "cancelled" in r.processed[0][2]
    with loop.session() as s:
        assert {p.status for p in s.exec(select(Party))} == {"cancelled"}


def test_a_party_who_asks_for_discretion_is_not_quoted(world) -> None:
    loop, clock = world
    deliver(loop, INTRO.format(n=12))
    loop.run_once()
    clock.advance(timedelta(days=3))
    loop.run_once()
    deliver(loop, reply(loop, request_to(loop, "bob@acme.example"), "bob@acme.example",
                        "It went well. Between us, their pricing is steep; please keep this "
                        "confidential.", n=12))
    loop.run_once()
    appreciation = next(o for o in outbox(loop) if o.kind == "appreciation")
    text = message_from_bytes(appreciation.raw, policy=policy.default).get_body(
        ("plain",)).get_content()
    assert "pricing" not in text and "confidential" not in text


def _text(row: Outbox) -> str:
    return message_from_bytes(row.raw, policy=policy.default).get_body(("plain",)).get_content()


def test_an_optout_undone_by_its_link_leaves_the_person_asked_again(world) -> None:
    loop, clock = world
    deliver(loop, INTRO.format(n=20))
    loop.run_once()
    clock.advance(timedelta(days=3))
    loop.run_once()
    deliver(loop, reply(loop, request_to(loop, "bob@acme.example"), "bob@acme.example",
                        "Please stop sending these.", n=20))
    loop.run_once()
    with loop.session() as s:
        assert s.get(Suppression, "bob@acme.example") is not None
    confirmation = next(o for o in outbox(loop) if o.kind == "optout_confirmation")
    text = _text(confirmation)
    # it says what we understood, and how to take it back
    assert '"Please stop sending these."' in text and "within 30 days" in text
    undo = next(w for w in text.split() if w.startswith("referrals+") and "r" in w)
    clock.advance(timedelta(days=1))
    deliver(loop, f"From: bob@acme.example\nTo: {undo}\nSubject: That is not what I meant\n"
                  "Message-ID: <undo-20@acme.example>\n\nThat is not what I meant.\n")
    r = loop.run_once()
    assert "undone by its link" in r.processed[0][2]
    with loop.session() as s:
        assert s.get(Suppression, "bob@acme.example") is None
        bob = s.exec(select(Party).where(Party.email == "bob@acme.example")).one()
        assert bob.status == "requested" and bob.outcome is None
    # asked again, as before: the answer now counts
    assert [k for k, to, _ in r.sent if to == "bob@acme.example"] == ["recheck"]
    deliver(loop, reply(loop, request_to(loop, "bob@acme.example"), "bob@acme.example",
                        "It went really well, we signed a contract!", n=21))
    loop.run_once()
    assert ("appreciation", "alice@example.com") in sent_kinds(loop)
    # the link does not work twice, nor after 30 days
    deliver(loop, f"From: bob@acme.example\nTo: {undo}\nSubject: again\n"
                  "Message-ID: <undo-21@acme.example>\n\nagain\n")
    r = loop.run_once()
    assert "nothing to undo" in r.processed[0][2]


def test_a_pending_answer_naming_a_date_is_rechecked_just_after_it(world) -> None:
    loop, clock = world
    deliver(loop, INTRO.format(n=22))
    loop.run_once()
    clock.advance(timedelta(days=3))  # Thursday 8 October
    loop.run_once()
    deliver(loop, reply(loop, request_to(loop, "bob@acme.example"), "bob@acme.example",
                        "Not yet: our board decides on the 20th, I'll know after that.", n=22))
    loop.run_once()
    ack = next(o for o in outbox(loop) if o.kind == "pending_ack")
    assert "Wednesday 21 October 2026" in _text(ack)
    clock.advance(timedelta(days=12))  # the 20th: too early
    loop.run_once()
    assert ("recheck", "bob@acme.example") not in sent_kinds(loop)
    clock.advance(timedelta(days=1, hours=1))  # the morning after
    loop.run_once()
    assert ("recheck", "bob@acme.example") in sent_kinds(loop)
