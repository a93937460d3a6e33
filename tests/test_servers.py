"""Smoke tests proving the test servers are real: Postfix → LMTP → Dovecot, IMAP, PostgreSQL."""

from __future__ import annotations

import smtplib
import time
import uuid
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa
from imapclient.imapclient import SENT

if TYPE_CHECKING:
    from servers import MailStack

pytestmark = pytest.mark.servers

SERVICE = "referrals@example.test"


def make_mail(to: str, sender: str = "someone@example.test") -> tuple[bytes, str]:
    """A small message with CRLF line endings and a unique Message-ID (returned too)."""
    msg_id = f"<{uuid.uuid4().hex}@example.test>"
    raw = (
        f"From: {sender}\r\nTo: {to}\r\nSubject: smoke {msg_id}\r\n"
        f"Message-ID: {msg_id}\r\n\r\nhello\r\n"
    ).encode()
    return raw, msg_id


def parse(raw: bytes) -> EmailMessage:
    return message_from_bytes(raw, policy=policy.default)  # type: ignore[return-value]


def deliver(stack: MailStack, rcpt: str, user: str) -> EmailMessage:
    """Send a fresh message to ``rcpt`` over SMTP and return it as stored for ``user``."""
    before = len(stack.messages(user))
    raw, msg_id = make_mail(rcpt)
    assert stack.send(raw, "someone@example.test", [rcpt]) == {}
    found = [m for m in map(parse, stack.wait_for(user, before + 1)) if m["Message-ID"] == msg_id]
    assert len(found) == 1
    return found[0]


def test_plus_address_lands_in_inbox_with_delivered_to(mailstack: MailStack) -> None:
    msg = deliver(mailstack, "referrals+tok123@example.test", SERVICE)
    assert msg["Delivered-To"] == "referrals+tok123@example.test"
    # it really went through Postfix, then Dovecot's LMTP
    received = " ".join(msg.get_all("Received", []))
    assert "(Postfix) with ESMTP" in received
    assert "with LMTP" in received


def test_unknown_user_and_foreign_domain_are_refused_at_rcpt(mailstack: MailStack) -> None:
    with smtplib.SMTP(mailstack.host, mailstack.smtp_port, timeout=10) as s:
        s.ehlo("client.example.test")
        s.mail("someone@example.test")
        code, reply = s.rcpt("nobody@example.test")
        assert code == 550, reply
        assert b"User unknown" in reply
        code, reply = s.rcpt("someone@elsewhere.invalid")
        assert code == 554, reply  # relay denied: nothing ever leaves the machine
    raw, _ = make_mail("nobody@example.test")
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        mailstack.send(raw, "someone@example.test", ["nobody@example.test"])


def test_idle_wakes_up_after_a_delivery(mailstack: MailStack) -> None:
    with mailstack.imap("bob@example.test") as client:
        client.select_folder("INBOX")
        client.idle()
        raw, _ = make_mail("bob@example.test")
        mailstack.send(raw, "someone@example.test", ["bob@example.test"])
        responses: list = []
        deadline = time.monotonic() + 15  # Dovecot notifies ~0.5 s after delivery
        while time.monotonic() < deadline and not any(r[1] == b"EXISTS" for r in responses):
            responses += client.idle_check(timeout=1)
        client.idle_done()
    assert any(r[1] == b"EXISTS" for r in responses), responses


def test_append_to_sent(mailstack: MailStack) -> None:
    raw, msg_id = make_mail("bob@example.test", sender="alice@example.test")
    with mailstack.imap("alice@example.test") as client:
        assert client.find_special_folder(SENT) == "Sent"
        client.append("Sent", raw, flags=[b"\\Seen"])
    sent = [parse(m) for m in mailstack.messages("alice@example.test", "Sent")]
    assert msg_id in [m["Message-ID"] for m in sent]


def test_restarting_imap_keeps_mail_and_queued_mail_arrives(mailstack: MailStack) -> None:
    user = mailstack.add_user(f"keep{uuid.uuid4().hex[:8]}@example.test")
    first = deliver(mailstack, user, user)
    mailstack.stop_imap()
    try:
        with pytest.raises(OSError):
            mailstack.messages(user)
        # Dovecot is down: Postfix keeps this one in its queue and retries
        raw, queued_id = make_mail(user)
        mailstack.send(raw, "someone@example.test", [user])
    finally:
        mailstack.start_imap()
    ids = [parse(m)["Message-ID"] for m in mailstack.wait_for(user, 2)]
    assert ids == [first["Message-ID"], queued_id]


def test_postgres_accepts_sqlalchemy_and_skip_locked_claims_are_disjoint(pg_url: str) -> None:
    engine = sa.create_engine(pg_url)
    jobs = sa.Table("jobs", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True))
    try:
        with engine.begin() as conn:
            assert conn.execute(sa.text("select version()")).scalar_one().startswith("PostgreSQL")
            jobs.create(conn)
            conn.execute(jobs.insert(), [{"id": i} for i in (1, 2, 3)])
        claim = sa.select(jobs.c.id).order_by(jobs.c.id).limit(1).with_for_update(skip_locked=True)
        assert "FOR UPDATE SKIP LOCKED" in str(claim.compile(engine))
        with engine.connect() as first, engine.connect() as second, first.begin():
            assert first.execute(claim).scalar_one() == 1
            with second.begin():  # row 1 is locked by `first`: skipped, not waited for
                assert second.execute(claim).scalar_one() == 2
    finally:
        engine.dispose()


def test_pg_url_is_a_fresh_database(pg_url: str) -> None:
    engine = sa.create_engine(pg_url)
    try:
        with engine.connect() as conn:
            assert sa.inspect(conn).get_table_names() == []
    finally:
        engine.dispose()
