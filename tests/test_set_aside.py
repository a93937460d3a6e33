"""Nothing silent: mail from members and from people we asked is never dropped without a word.

Fastmail and Proton stamp Feedback-ID on every message their users send; these tests run such
mail through the whole loop (embedded transport, frozen clock): a member's intro is recorded,
a party's "stop" is honoured, and whatever is still set aside is counted for the operator
(check, health, the daily alert, `quarantine list --set-aside`), with a short note to a member
whose intro did not count because of how it was sent.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlmodel import select

from service.adapters.local import MaildirMailbox
from service.adapters.tables import Inbound, Outbox, Party, Referral
from service.alerts import current_alerts
from service.app import FrozenClock, build_loop
from service.cli import main
from service.config import load_settings
from service.health import health_report
from service.loop import Loop
from service.queries import add_member

START = datetime(2026, 10, 5, 9, 0, tzinfo=UTC)
FASTMAIL_INTRO = """From: Dana Whitfield <dana@fastmail.com>
To: Priya Raman <priya@proton.me>, Tom Berger <tom.berger@gmx.de>
Subject: Intro: Priya <> Tom
Date: Mon, 05 Oct 2026 09:00:00 +0000
Message-ID: <{mid}@fastmail.com>
Feedback-ID: 123456:user:proxy:fastmail
X-Mailer: MessagingEngine.com Webmail Interface
{extra}MIME-Version: 1.0
Content-Type: text/plain; charset="utf-8"

Priya, meet Tom. Tom runs the best print shop in Leipzig.
"""


def _settings(tmp: Path):
    return load_settings(None, {
        "address": "referrals@network.example", "network_name": "Test Network",
        "operator": "ops@network.example", "secret": "x" * 32, "data_dir": tmp,
        "database_url": None, "imap_host": None, "smtp_host": None,
        "feedback_delay": "3d", "reminder_delay": "4d", "max_reminders": 1,
        "pending_recheck": "14d", "timezone": "UTC", "quiet_hours": "", "allow_senders": "",
    })


@pytest.fixture
def world(tmp_path: Path):
    st = _settings(tmp_path)
    clock = FrozenClock(START)
    loop = build_loop(st, clock=clock)
    add_member(st, "dana@fastmail.com", "Dana Whitfield", None, ())
    return loop, clock, st


def deliver(loop: Loop, raw: str) -> None:
    assert isinstance(loop.mailbox, MaildirMailbox)
    loop.mailbox.deliver(raw.replace("\n", "\r\n").encode())


def outbox(loop: Loop) -> list[Outbox]:
    with loop.session() as s:
        return list(s.exec(select(Outbox).order_by(Outbox.id)))


def inbound(loop: Loop) -> list[Inbound]:
    with loop.session() as s:
        return list(s.exec(select(Inbound).order_by(Inbound.id)))


def proton_reply(request: Outbox, text: str, *, token: bool = True, refs: bool = True) -> str:
    msg = message_from_bytes(request.raw, policy=policy.default)
    to = str(msg["Reply-To"]) if token else "referrals@network.example"
    thread = (f"In-Reply-To: <{request.message_id}>\nReferences: <{request.message_id}>\n"
              if refs else "")
    return (f"From: Priya Raman <priya@proton.me>\nTo: {to}\n"
            f"Subject: Re: {request.subject}\nMessage-ID: <r{request.id}{token}{refs}@proton.me>\n"
            f"Date: Thu, 08 Oct 2026 10:00:00 +0000\n{thread}"
            "Feedback-ID: 20:30:40:proton\nX-Pm-Origin: internal\nX-Pm-Content-Encryption: "
            "end-to-end\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\n"
            f"{text}\n\nSent with Proton Mail secure email.\n")


def _requests(loop: Loop) -> dict[str, Outbox]:
    return {o.to_email: o for o in outbox(loop) if o.kind == "feedback_request"}


def test_a_fastmail_intro_and_a_proton_stop_are_heard(world) -> None:
    loop, clock, _ = world
    deliver(loop, FASTMAIL_INTRO.format(mid="i1", extra=""))
    r = loop.run_once()
    assert [k for _, k, _ in r.processed] == ["intro"], r.processed
    clock.advance(timedelta(days=3))
    loop.run_once()
    requests = _requests(loop)
    assert set(requests) == {"priya@proton.me", "tom.berger@gmx.de"}

    deliver(loop, proton_reply(requests["priya@proton.me"],
                               "Please stop emailing me about this."))
    r = loop.run_once()
    assert [k for _, k, _ in r.processed] == ["reply"], r.processed
    assert "outranks bulk-hint" in inbound(loop)[-1].reason or "optout" in r.processed[0][2]
    with loop.session() as s:
        priya = s.exec(select(Party).where(Party.email == "priya@proton.me")).one()
    assert priya.status == "optedout"
    # no reminder ever reaches her; Tom still gets his
    clock.advance(timedelta(days=10))
    loop.run_once()
    kinds_to_priya = {o.kind for o in outbox(loop) if o.to_email == "priya@proton.me"}
    assert "reminder" not in kinds_to_priya
    assert any(o.kind == "reminder" and o.to_email == "tom.berger@gmx.de" for o in outbox(loop))
    assert not [i for i in inbound(loop) if i.set_aside]


def test_a_reply_that_lost_token_and_references_is_still_matched(world) -> None:
    loop, clock, _ = world
    deliver(loop, FASTMAIL_INTRO.format(mid="i2", extra=""))
    loop.run_once()
    clock.advance(timedelta(days=3))
    loop.run_once()
    request = _requests(loop)["priya@proton.me"]
    # a fresh message (no token, no References) with only a hint of bulk: the sender's open
    # request still matches it
    deliver(loop, proton_reply(request, "It went really well, we signed a contract!",
                               token=False, refs=False))
    r = loop.run_once()
    assert [k for _, k, _ in r.processed] == ["reply"], r.processed
    assert "matched by sender" in r.processed[0][2]


def test_set_aside_mail_is_counted_listed_and_alerted(world) -> None:
    loop, clock, st = world
    # a member's post to a list the service reads: list evidence, so not an intro, and no
    # note to the member (a list post is not a misdirected intro)...
    deliver(loop, FASTMAIL_INTRO.format(mid="l1", extra="List-Id: <founders.lists.example>\n"))
    # ...and an intro to more people than an intro has: set aside, and the member hears
    # once a week (two such messages, one note) what to do instead
    many = ", ".join(f"p{i} <p{i}@acme.example>" for i in range(10))
    for mid in ("m1", "m2"):
        deliver(loop, FASTMAIL_INTRO.format(mid=mid, extra="").replace(
            "To: Priya Raman <priya@proton.me>, Tom Berger <tom.berger@gmx.de>", f"To: {many}"))
    r = loop.run_once()
    assert [k for _, k, _ in r.processed] == ["ignored", "ignored", "ignored"]
    rows = inbound(loop)
    assert [i.set_aside for i in rows] == ["member", "member", "member"]
    notes = [o for o in outbox(loop) if o.kind == "set_aside_note"]
    assert len(notes) == 1 and notes[0].to_email == "dana@fastmail.com"
    text = message_from_bytes(notes[0].raw, policy=policy.default).get_body(
        ("plain",)).get_content()
    assert "10 people" in text and "Bcc" in text
    with loop.session() as s:
        assert s.exec(select(Referral)).all() == []

    # the operator: the daily alert lists both, check and health carry it
    alerts = current_alerts(loop.engine, st, clock.now())
    alert = next(a for a in alerts if a.cause == "set-aside")
    assert alert.title.startswith("3 message(s)") and len(alert.items) == 3
    assert "dana@fastmail.com (member)" in alert.items[0]
    env = {"INTROLOOP_ADDRESS": "referrals@network.example", "INTROLOOP_SECRET": "x" * 32,
           "INTROLOOP_DATA_DIR": str(st.data_dir)}
    out = CliRunner().invoke(main, ["--env-file", "/nonexistent/.env", "quarantine", "list",
                                    "--set-aside"], env=env).output
    assert out.count("[member]") == 3 and "list:" in out and "mailing" in out
    _, warnings = health_report(st, clock.now())
    assert any("set aside" in w for w in warnings)
    # a day later the alert is gone (it was mailed once, the list still has them)
    clock.advance(timedelta(days=2))
    assert not [a for a in current_alerts(loop.engine, st, clock.now())
                if a.cause == "set-aside"]


def test_duplicates_are_not_set_aside(world) -> None:
    loop, _, _ = world
    deliver(loop, FASTMAIL_INTRO.format(mid="d1", extra=""))
    deliver(loop, FASTMAIL_INTRO.format(mid="d1", extra="X-Spam-Score: 0\n"))
    r = loop.run_once()
    assert [k for _, k, _ in r.processed] == ["intro", "ignored"]
    assert [i.set_aside for i in inbound(loop)] == [None, None]
