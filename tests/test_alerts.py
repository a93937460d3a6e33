"""Operator alerts through the loop with a frozen clock: each cause is e-mailed at most once a day,
and nothing more goes out once the cause is gone. Facts are gathered from a real database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlmodel import Session, select

from service.adapters.local import MaildirMailbox
from service.adapters.tables import Inbound, OAuthToken, Outbox, Reply
from service.alerts import SigninRecorder, current_alerts, gather_facts
from service.app import FrozenClock, build_loop
from service.config import load_settings
from service.loop import Loop
from service.ports import TemporaryFailure

START = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
OPERATOR = "ops@network.example"
NEWSLETTER = (b"From: News <news@letters.example>\r\nTo: referrals@network.example\r\n"
              b"Subject: This week\r\nMessage-ID: <n-%d@letters.example>\r\n"
              b"List-Unsubscribe: <mailto:u@letters.example>\r\n\r\nHello all.\r\n")


class RecordingSender:
    """An SMTP stand-in that keeps what it sends, or fails temporarily when told to."""

    def __init__(self) -> None:
        self.sent: list[EmailMessage] = []
        self.fail = False

    def send(self, raw: bytes, mail_from: str, rcpt_to: list[str], message_id: str) -> None:
        if self.fail:
            raise TemporaryFailure("451 4.3.0 try again later")
        self.sent.append(message_from_bytes(raw, policy=policy.default))  # type: ignore[arg-type]

    def close(self) -> None:
        pass


def settings(tmp: Path, **over: object):
    values: dict[str, object] = {
        "address": "referrals@network.example", "network_name": "Test Network",
        "operator": OPERATOR, "secret": "x" * 32, "data_dir": tmp, "database_url": None,
        # a real mailbox is configured (alerts are mailed); the tests hand in local stand-ins
        "imap_host": "imap.network.example", "imap_user": "referrals@network.example",
        "imap_password": "pw", "smtp_host": "smtp.network.example",
        "timezone": "UTC", "quiet_hours": "", "allow_senders": "",
    }
    values.update(over)
    return load_settings(None, values)


@pytest.fixture
def world(tmp_path: Path):
    clock = FrozenClock(START)
    sender = RecordingSender()
    loop = build_loop(settings(tmp_path), clock=clock, sender=sender,
                      mailbox=MaildirMailbox(tmp_path / "maildir"))
    return loop, clock, sender


def alert_rows(loop: Loop) -> list[Outbox]:
    with loop.session() as s:
        return list(s.exec(select(Outbox).where(Outbox.kind == "operator_alert")
                           .order_by(Outbox.id)))


def alerts_sent(sender: RecordingSender) -> list[EmailMessage]:
    return [m for m in sender.sent if "ops@" in str(m["To"])
            and "summary" not in str(m["Subject"]).lower()]


def test_silence_is_mailed_once_a_day_and_stops_when_mail_arrives(world) -> None:
    loop, clock, sender = world
    loop.run_once()  # the silence clock starts with the first tick
    clock.advance(timedelta(days=6, hours=23))
    loop.run_once()
    assert alert_rows(loop) == []

    clock.advance(timedelta(hours=2))  # 7 days and 1 hour of silence
    loop.run_once()
    [row] = alert_rows(loop)
    assert row.key == "alert:silence:2026-11-09" and row.status == "sent"
    [mail] = alerts_sent(sender)
    assert mail["To"].addresses[0].addr_spec == OPERATOR
    assert mail["Auto-Submitted"] == "auto-generated"
    assert str(mail["Subject"]) == "No mail has reached the service mailbox for 7 days"
    text = mail.get_body(("plain",)).get_content()
    assert "What to do:" in text and "INTROLOOP_SILENCE_ALERT" in text
    html = mail.get_body(("html",)).get_content()
    assert "No mail has reached the service mailbox" in html

    for _ in range(3):  # later ticks the same day: nothing more
        clock.advance(timedelta(hours=3))
        loop.run_once()
    assert len(alert_rows(loop)) == 1 and len(alerts_sent(sender)) == 1

    clock.advance(timedelta(days=1))  # still silent the next day: one more
    loop.run_once()
    assert [r.key for r in alert_rows(loop)] == ["alert:silence:2026-11-09",
                                                 "alert:silence:2026-11-10"]

    assert isinstance(loop.mailbox, MaildirMailbox)
    loop.mailbox.deliver(NEWSLETTER % 1)  # the cause goes away
    clock.advance(timedelta(days=1))
    loop.run_once()
    clock.advance(timedelta(days=2))
    loop.run_once()
    assert len(alert_rows(loop)) == 2 and len(alerts_sent(sender)) == 2


def test_signin_failure_is_critical_after_a_grace_and_stops_when_signed_in(world) -> None:
    loop, clock, sender = world
    signin = SigninRecorder(loop.engine, clock)  # what the IMAP adapter calls
    loop.run_once()
    error = ("IMAP imap.network.example:993 (ssl) refused the OAuth token (XOAUTH2) for "
             "referrals@network.example: [AUTHENTICATIONFAILED] Authentication failed.")
    signin("imap", error)
    clock.advance(timedelta(minutes=5))
    signin("imap", error)  # still failing: the start of the trouble is kept
    loop.run_once()
    assert alert_rows(loop) == []  # a short hiccup heals by itself

    clock.advance(timedelta(minutes=15))
    loop.run_once()
    [mail] = alerts_sent(sender)
    assert str(mail["Subject"]) == ("Action needed: Introloop cannot sign in to the mailbox "
                                    "(IMAP)")
    text = mail.get_body(("plain",)).get_content()
    assert "AUTHENTICATIONFAILED" in text and "Failing for 20 min" in text
    assert "introloop auth" in text and "Since: 2026-11-02 09:00 UTC" in text
    loop.run_once()
    assert len(alert_rows(loop)) == 1

    signin("imap", None)  # signed in again
    clock.advance(timedelta(days=1))
    loop.run_once()
    assert len(alert_rows(loop)) == 1 and len(alerts_sent(sender)) == 1
    assert gather_facts(loop.engine, loop.settings, clock.now()).signin == ()


def test_a_queued_alert_whose_cause_went_away_is_never_sent(world) -> None:
    loop, clock, sender = world
    signin = SigninRecorder(loop.engine, clock)
    loop.run_once()
    sender.fail = True  # SMTP trouble: the alert itself waits in the outbox
    signin("smtp", "SMTP smtp.network.example:587 refused the login: 535 5.7.8 bad")
    clock.advance(timedelta(minutes=20))
    loop.run_once()
    [row] = alert_rows(loop)
    assert row.status == "pending" and row.key == "alert:signin:2026-11-02"

    signin("smtp", None)
    sender.fail = False
    clock.advance(timedelta(minutes=10))
    loop.run_once()
    [row] = alert_rows(loop)
    assert row.status == "cancelled" and "went away" in (row.last_error or "")
    assert alerts_sent(sender) == []


def test_alerts_are_not_mailed_with_the_local_transport(tmp_path: Path) -> None:
    st = settings(tmp_path, imap_host=None, smtp_host=None, imap_password=None)
    clock = FrozenClock(START)
    loop = build_loop(st, clock=clock)
    loop.run_once()
    clock.advance(timedelta(days=9))
    loop.run_once()
    assert alert_rows(loop) == []
    # ... but `check` and `health` still see them
    assert [a.cause for a in current_alerts(loop.engine, st, clock.now())] == ["silence"]


def add(loop: Loop, *rows: object) -> None:
    with Session(loop.engine) as s, s.begin():
        for row in rows:
            s.add(row)


def inbound(n: int, at: datetime, status: str = "processed") -> Inbound:
    return Inbound(id=n, content_hash=f"hash-{n}", raw=b"Subject: x\r\n\r\nx\r\n", size=18,
                   received_at=at, status=status, processed_at=at)


def test_unclear_replies_waiting_three_days_alert_until_settled(world) -> None:
    loop, clock, _ = world
    now = clock.now()
    add(loop, inbound(1, now - timedelta(days=2)), inbound(2, now - timedelta(days=4)))
    add(loop, Reply(id=1, inbound_id=1, from_email="bob@x.example", outcome="unclear"),
        Reply(id=2, inbound_id=2, from_email="carol@x.example", outcome="unclear"))
    [alert] = current_alerts(loop.engine, loop.settings, now)
    assert alert.cause == "unclear" and alert.title.startswith("1 unclear answer(s)")
    assert "4 days" in alert.detail
    with Session(loop.engine) as s, s.begin():
        reply = s.get(Reply, 2)
        assert reply is not None
        reply.settled_by, reply.settled_outcome = "cli", "positive"
    assert current_alerts(loop.engine, loop.settings, now) == []


def test_quarantine_alerts_for_a_day_after_a_message_fails(world) -> None:
    loop, clock, _ = world
    now = clock.now()
    add(loop, inbound(1, now - timedelta(days=10), "quarantined"),
        inbound(2, now - timedelta(hours=3), "quarantined"))
    [alert] = current_alerts(loop.engine, loop.settings, now)
    assert alert.cause == "quarantine" and alert.title.startswith("1 message(s)")
    assert "2 in quarantine" in alert.detail
    assert current_alerts(loop.engine, loop.settings, now + timedelta(days=1)) == []


def test_outbox_stuck_when_overdue_or_failing_repeatedly(world) -> None:
    loop, clock, _ = world
    now = clock.now()
    add(loop, Outbox(key="request:1:1", kind="feedback_request", to_email="bob@x.example",
                     message_id="m1@network.example", raw=b"x", attempts=6,
                     last_error="451 4.3.0 try again later",
                     next_attempt_at=now + timedelta(minutes=30)))
    [alert] = current_alerts(loop.engine, loop.settings, now)
    assert alert.cause == "outbox" and alert.severity == "critical"
    assert "451 4.3.0" in alert.detail
    facts = gather_facts(loop.engine, loop.settings, now)
    assert facts.outbox_retrying == 1 and facts.outbox_overdue_since is None


def test_oauth_facts_only_for_the_configured_sign_in(tmp_path: Path) -> None:
    st = settings(tmp_path, provider="google", imap_host=None, smtp_host=None,
                  imap_password=None, oauth_client_id="cid", oauth_client_secret="cs")
    assert st.uses_oauth and st.imap_host == "imap.gmail.com"
    loop = build_loop(st, clock=FrozenClock(START), mailbox=MaildirMailbox(tmp_path / "m"),
                      sender=RecordingSender())
    now = START
    add(loop, OAuthToken(account="referrals@network.example", provider="google",
                         client_id="cid", state=b"", signed_in_at=now - timedelta(days=6),
                         refresh_expires_at=now + timedelta(days=1),
                         expiry_reason="Google apps in Testing get refresh tokens that last "
                         "7 days", failing_since=now - timedelta(hours=1),
                         last_error="Google refused to refresh the sign-in: invalid_grant"),
        OAuthToken(account="someone-else@network.example", provider="google",
                   client_id="cid", state=b"", signed_in_at=now - timedelta(days=30),
                   refresh_expires_at=now - timedelta(days=20)))
    alerts = current_alerts(loop.engine, st, now)
    assert [(a.cause, a.severity) for a in alerts] == [("signin", "critical"),
                                                       ("token-expiry", "warning")]
    assert "invalid_grant" in alerts[0].detail and "7 days" in alerts[1].detail
