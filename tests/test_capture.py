"""Capture through the whole loop (local transport, frozen clock): one referral per real intro,
none for anything else, no mail to rejected or unknown senders, the optional confirmation and
its "cancel" reply.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from sqlmodel import select

from service.adapters.local import MaildirMailbox
from service.adapters.tables import Outbox, Party, Referral
from service.app import FrozenClock, build_loop
from service.config import load_settings
from service.core import tokens as tk
from service.loop import Loop
from service.ports import RawMail, TemporaryFailure
from service.queries import add_member, requeue_inbound

START = datetime(2026, 10, 5, 9, 0, tzinfo=UTC)
DATA = Path(__file__).resolve().parent / "data" / "intros"
INTRO = """From: Alice Martin <alice@example.com>
To: Bob Chen <bob@acme.example>, Carol Diaz <carol@studio.example>
Subject: Intro: Bob <> Carol
Date: Mon, 05 Oct 2026 09:00:00 +0000
Message-ID: <{mid}>
Content-Type: text/plain; charset="utf-8"

Bob, meet Carol. Carol, meet Bob.
Alice
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


def make_world(tmp: Path, mailbox=None, **over) -> tuple[Loop, FrozenClock]:
    st = settings(tmp, **over)
    clock = FrozenClock(START)
    loop = build_loop(st, clock=clock, mailbox=mailbox)
    add_member(st, "alice@example.com", "Alice Martin", None, ("alice.private@gmail.example",))
    return loop, clock


@pytest.fixture
def world(tmp_path: Path):
    return make_world(tmp_path)


def deliver(loop: Loop, raw: str | bytes) -> None:
    assert isinstance(loop.mailbox, MaildirMailbox)
    data = raw.replace("\n", "\r\n").encode() if isinstance(raw, str) else raw
    loop.mailbox.deliver(data)


def referrals(loop: Loop) -> list[Referral]:
    with loop.session() as s:
        return list(s.exec(select(Referral).order_by(Referral.id)))


def parties(loop: Loop, referral_id: int) -> list[Party]:
    with loop.session() as s:
        return list(s.exec(select(Party).where(Party.referral_id == referral_id)
                           .order_by(Party.id)))


def outbox(loop: Loop) -> list[Outbox]:
    with loop.session() as s:
        return list(s.exec(select(Outbox).order_by(Outbox.id)))


def kinds(report) -> list[str]:
    return [k for _, k, _ in report.processed]


# --- duplicates ---------------------------------------------------------------------------------


def test_the_member_bccing_twice_is_one_referral(world) -> None:
    loop, clock = world
    deliver(loop, INTRO.format(mid="first@mail.example.com"))
    loop.run_once()
    clock.advance(timedelta(minutes=4))
    # sent again from the phone: another Message-ID, Date and line breaks, the same words
    again = INTRO.format(mid="second@iphone.example.com").replace(
        "Mon, 05 Oct 2026 09:00:00", "Mon, 05 Oct 2026 09:04:00").replace(
        "Bob, meet Carol. Carol, meet Bob.", "Bob, meet Carol.\nCarol, meet Bob.")
    deliver(loop, again)
    r = loop.run_once()
    assert kinds(r) == ["ignored"]
    assert "same text to the same people as referral #1" in r.processed[0][2]
    assert len(referrals(loop)) == 1


def test_the_same_words_weeks_later_are_a_new_intro(world) -> None:
    loop, clock = world
    deliver(loop, INTRO.format(mid="first@mail.example.com"))
    loop.run_once()
    clock.advance(timedelta(days=21))
    deliver(loop, INTRO.format(mid="later@mail.example.com"))
    assert kinds(loop.run_once()) == ["intro"]
    keys = [r.intro_key for r in referrals(loop)]
    assert len(set(keys)) == 2 and keys[1].startswith(keys[0] + ":")
    # and a third copy a minute after the second is still recognised
    clock.advance(timedelta(minutes=1))
    deliver(loop, INTRO.format(mid="later-again@mail.example.com"))
    assert kinds(loop.run_once()) == ["ignored"]
    assert len(referrals(loop)) == 2


def test_a_forward_of_an_intro_already_bccd_is_the_same_intro(world) -> None:
    loop, _ = world
    original = (DATA / "forwarded_rfc822.eml").read_bytes()
    first = original.split(b"Content-Type: message/rfc822\n\n", 1)[1].split(b"\n--XX--")[0]
    deliver(loop, first)  # the intro itself, BCC'd
    deliver(loop, original)  # and then forwarded as an attachment too
    r = loop.run_once()
    assert kinds(r) == ["intro", "ignored"]
    assert "Message-ID <orig-1@example.com>" in r.processed[1][2]


def test_a_forwarded_intro_threads_under_the_original(world) -> None:
    loop, clock = world
    deliver(loop, (DATA / "fwd_outlook_attached.eml").read_bytes())
    loop.run_once()
    (ref,) = referrals(loop)
    assert ref.intro_message_id == (
        "AM7PR03MB6544ORIG0005@AM7PR03MB6544.eurprd03.prod.outlook.com")
    assert ref.subject == "FW: Intro: Bob <> Carol"
    clock.advance(timedelta(days=3))
    loop.run_once()
    req = next(o for o in outbox(loop) if o.kind == "feedback_request")
    msg = message_from_bytes(req.raw, policy=policy.default)
    assert msg["References"] == f"<{ref.intro_message_id}>"


def test_a_follow_up_in_the_intro_thread_is_not_a_new_intro(world) -> None:
    loop, _ = world
    deliver(loop, (DATA / "gmail_web.eml").read_bytes())
    deliver(loop, (DATA / "followup_in_thread.eml").read_bytes())
    r = loop.run_once()
    assert kinds(r) == ["intro", "ignored"]
    assert "follow-up in the thread of referral #1" in r.processed[1][2]


class ResyncingMailbox:
    """An IMAP-like mailbox whose UIDVALIDITY changes: every message is served again."""

    name = "imap"

    def __init__(self, messages: list[bytes]):
        self.messages = messages
        self.validity = 1

    def uidvalidity(self) -> int:
        return self.validity

    def fetch_new(self, after_uid: int | None) -> Iterator[RawMail]:
        for uid, data in enumerate(self.messages, start=1):
            if uid > (after_uid or 0):
                yield RawMail(data, self.name, "INBOX", self.validity, uid)

    def mark_done(self, mail: RawMail) -> None:
        pass

    def wait(self, timeout: float) -> bool:
        return False

    def close(self) -> None:
        pass


def test_a_resync_after_uidvalidity_changes_is_harmless(tmp_path: Path) -> None:
    mailbox = ResyncingMailbox([
        INTRO.format(mid="a@mail.example.com").replace("\n", "\r\n").encode(),
        (DATA / "gmail_web.eml").read_bytes(),
    ])
    loop, _ = make_world(tmp_path, mailbox=mailbox)
    assert kinds(loop.run_once()) == ["intro", "intro"]
    mailbox.validity = 2  # the server rebuilt the folder: the same two messages come again
    # one copy byte-identical, one with a header the server added on the way
    mailbox.messages[1] = b"X-Spam-Score: 0.1\r\n" + mailbox.messages[1]
    r = loop.run_once()
    assert r.fetched == 2 and kinds(r) == ["ignored"]
    assert "duplicate" in r.processed[0][2]
    assert len(referrals(loop)) == 2


# --- nothing for rejected or unknown senders ---------------------------------------------------


def test_unknown_and_forged_senders_get_no_mail(tmp_path: Path) -> None:
    loop, clock = make_world(tmp_path, trusted_authserv_id="mx.network.example")
    deliver(loop, (DATA / "stranger.eml").read_bytes())
    forged = ("Authentication-Results: mx.network.example; dkim=none; spf=fail "
              "smtp.mailfrom=x@evil.example; dmarc=fail (p=reject) header.from=example.com\n"
              + INTRO.format(mid="forged@evil.example"))
    deliver(loop, forged)
    r = loop.run_once()
    assert kinds(r) == ["rejected", "rejected"]
    assert "fails DMARC" in r.processed[1][2]
    for _ in range(5):
        clock.advance(timedelta(days=3))
        loop.run_once()
    assert referrals(loop) == [] and outbox(loop) == []


def test_a_rejected_intro_can_be_retried_after_the_member_is_added(tmp_path: Path) -> None:
    loop, _ = make_world(tmp_path)
    raw = INTRO.format(mid="dave@dave.example").replace("alice@example.com", "dave@dave.example")
    deliver(loop, raw)
    r = loop.run_once()
    assert kinds(r) == ["rejected"]
    add_member(loop.settings, "dave@dave.example", "Dave", None, ())
    inbound_id = r.processed[0][0]
    requeue_inbound(loop, inbound_id)
    assert loop.process_one(inbound_id)[0] == "intro"


# --- confirmation to the referrer and "cancel" ------------------------------------------------


@pytest.fixture
def confirming(tmp_path: Path):
    return make_world(tmp_path, confirm_intros=True)


def confirmation(loop: Loop) -> Outbox:
    return next(o for o in outbox(loop) if o.kind == "intro_confirmation")


def answer(row: Outbox, sender: str, text: str, n: int = 0) -> str:
    msg = message_from_bytes(row.raw, policy=policy.default)
    body = msg.get_body(("plain",)).get_content()
    quoted = "\n".join("> " + line for line in body.splitlines())
    return (f"From: {sender}\nTo: {msg['Reply-To']}\nSubject: Re: {row.subject}\n"
            f"Message-ID: <answer-{n}@example.com>\nIn-Reply-To: <{row.message_id}>\n"
            f"Content-Type: text/plain; charset=utf-8\n\n{text}\n\n"
            f"On Mon, Test Network wrote:\n{quoted}\n")


def test_confirmation_is_off_by_default(world) -> None:
    loop, _ = world
    deliver(loop, INTRO.format(mid="x@mail.example.com"))
    loop.run_once()
    assert outbox(loop) == []


def test_confirmation_names_the_parties_and_the_date(confirming) -> None:
    loop, _ = confirming
    deliver(loop, INTRO.format(mid="c1@mail.example.com"))
    r = loop.run_once()
    row = confirmation(loop)
    assert row.key == "confirm:1" and row.to_email == "alice@example.com"
    assert ("intro_confirmation", "alice@example.com", "Got it: tracking your intro of Bob "
            "Chen and Carol Diaz") in r.sent
    msg = message_from_bytes(row.raw, policy=policy.default)
    text = msg.get_body(("plain",)).get_content()
    assert "we'll ask them how it went on Thursday 8 October 2026" in text.lower() or \
        "We'll ask them how it went on Thursday 8 October 2026" in text
    assert tk.tokens_in([str(msg["Reply-To"])], "referrals@network.example", b"x" * 32) == [
        tk.Token(1, "c")]
    assert msg["References"] == "<c1@mail.example.com>"
    html = msg.get_body(("html",)).get_content()
    assert "Cancel this one" in html and "mailto:referrals+1c" in html
    # a second pass sends nothing again
    assert not [k for k, _, _ in loop.run_once().sent if k == "intro_confirmation"]


def test_replying_cancel_stops_every_request(confirming) -> None:
    loop, clock = confirming
    deliver(loop, INTRO.format(mid="c2@mail.example.com"))
    loop.run_once()
    clock.advance(timedelta(hours=1))
    deliver(loop, answer(confirmation(loop), "Alice Martin <alice@example.com>", "Cancel please"))
    r = loop.run_once()
    assert kinds(r) == ["reply"]
    assert "cancelled by its referrer: 2 parties will not be asked" in r.processed[0][2]
    assert referrals(loop)[0].status == "cancelled"
    assert {p.status for p in parties(loop, 1)} == {"cancelled"}
    for _ in range(4):
        clock.advance(timedelta(days=3))
        loop.run_once()
    assert [o.kind for o in outbox(loop)] == ["intro_confirmation"]


def test_a_thank_you_reply_does_not_cancel(confirming) -> None:
    loop, clock = confirming
    deliver(loop, INTRO.format(mid="c3@mail.example.com"))
    loop.run_once()
    # the quoted confirmation says "cancel"; only the member's own words count
    deliver(loop, answer(confirmation(loop), "alice@example.com", "Thanks, great service!"))
    r = loop.run_once()
    assert "does not say cancel" in r.processed[0][2]
    assert referrals(loop)[0].status == "open"
    clock.advance(timedelta(days=3))
    loop.run_once()
    assert sum(o.kind == "feedback_request" for o in outbox(loop)) == 2


def test_cancel_from_an_alias_works_and_from_a_stranger_does_not(confirming) -> None:
    loop, _ = confirming
    deliver(loop, INTRO.format(mid="c4@mail.example.com"))
    loop.run_once()
    deliver(loop, answer(confirmation(loop), "mallory@evil.example", "cancel", n=1))
    r = loop.run_once()
    assert "did not make" in r.processed[0][2] and referrals(loop)[0].status == "open"
    deliver(loop, answer(confirmation(loop), "alice.private@gmail.example", "cancel", n=2))
    loop.run_once()
    assert referrals(loop)[0].status == "cancelled"


class DownSender:
    """An SMTP server that answers 4xx: everything stays queued for a retry."""

    def send(self, raw: bytes, mail_from: str, rcpt_to: list[str], message_id: str) -> None:
        raise TemporaryFailure("451 4.3.0 try again later")

    def close(self) -> None:
        pass


def test_cancel_withdraws_requests_already_queued(tmp_path: Path) -> None:
    loop, clock = make_world(tmp_path, confirm_intros=True, feedback_delay="1h")
    loop.sender = DownSender()
    deliver(loop, INTRO.format(mid="c5@mail.example.com"))
    loop.run_once()
    clock.advance(timedelta(hours=2))
    loop.run_once()  # the requests are queued, waiting for the server to come back
    held = [o for o in outbox(loop) if o.kind == "feedback_request"]
    assert len(held) == 2 and {o.status for o in held} == {"pending"}
    deliver(loop, answer(confirmation(loop), "alice@example.com", "cancel - wrong Bob"))
    r = loop.run_once()
    assert "2 queued request(s) withdrawn" in r.processed[0][2]
    clock.advance(timedelta(days=1))
    loop.run_once()
    assert {o.status for o in outbox(loop) if o.kind == "feedback_request"} == {"cancelled"}


def test_cancel_before_quiet_hours_end(tmp_path: Path) -> None:
    loop, clock = make_world(tmp_path, confirm_intros=True, quiet_hours="08:00-20:00",
                             feedback_delay="1h")
    deliver(loop, INTRO.format(mid="c7@mail.example.com"))
    loop.run_once()
    clock.advance(timedelta(hours=2))
    loop.run_once()  # due, but held until 20:00 (as a party step or a queued message)
    deliver(loop, answer(confirmation(loop), "alice@example.com", "Cancel"))
    loop.run_once()
    clock.advance(timedelta(days=2))
    loop.run_once()
    assert [o.kind for o in outbox(loop) if o.status == "sent"] == ["intro_confirmation"]


def test_confirmation_says_who_will_not_be_asked(confirming) -> None:
    loop, _ = confirming
    with loop.session() as s:
        loop._suppress(s, "carol@studio.example", "optout", "test")
    deliver(loop, INTRO.format(mid="c6@mail.example.com"))
    loop.run_once()
    text = message_from_bytes(confirmation(loop).raw, policy=policy.default).get_body(
        ("plain",)).get_content()
    assert "We'll ask Bob Chen how it went" in text
    assert "Carol Diaz asked not to hear from us" in text


def test_fixture_intros_go_through_the_loop(tmp_path: Path) -> None:
    """Some of the table's intros end to end: one referral each, with the table's parties."""
    loop, _ = make_world(tmp_path)
    add_member(loop.settings, "alice@example.com", "Alice Martin", None,
               ("sam.assistant@example.com",))
    names = {
        "gmail_web.eml": ["bob@acme.example", "carol@studio.example"],
        "outlook_html_only_tnef.eml": ["jose@muller.example", "bob.chen@acme.example"],
        "apple_mail.eml": ["taro@yamada.example", "bob@acme.example"],
        "fwd_outlook_inline.eml": ["bob@acme.example", "carol@studio.example"],
        "group_four.eml": ["bob@acme.example", "carol@studio.example", "dave@dave.example",
                           "erin@oneil.example"],
        "unknown_charset.eml": ["jose@muller.example", "bob@acme.example"],
    }
    for name in names:
        deliver(loop, (DATA / name).read_bytes())
    r = loop.run_once()
    assert kinds(r) == ["intro"] * len(names), r.processed
    got = [[p.email for p in parties(loop, ref.id)] for ref in referrals(loop)]
    assert got == list(names.values())
    assert referrals(loop)[5].subject == "José / Bob"
    assert parties(loop, 2)[0].name == "Müller, José"
