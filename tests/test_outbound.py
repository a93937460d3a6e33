"""The outbound stage on the embedded transport with a frozen clock: combined requests, the
weekly cap, quiet hours and weekends (across a DST change), suppression, retries with jitter,
recovery after an interrupted send, DKIM, and hostile names and replies.

Real SMTP/IMAP servers: tests/test_outbound_servers.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from service.adapters.local import MaildirMailbox
from service.adapters.tables import Outbox, Party, Reply, Suppression
from service.app import FrozenClock, build_loop
from service.config import load_settings
from service.loop import Loop
from service.ports import MaybeSent, PermanentFailure, ServerUnreachable, TemporaryFailure
from service.queries import add_member

START = datetime(2026, 10, 5, 9, 0, tzinfo=UTC)  # a Monday


def settings(tmp: Path, **over: Any):
    values = {
        "address": "referrals@network.example", "network_name": "Test Network",
        "operator": "ops@network.example", "secret": "x" * 32, "data_dir": tmp,
        "database_url": None, "imap_host": None, "smtp_host": None,
        "feedback_delay": "3d", "reminder_delay": "4d", "max_reminders": 1,
        "pending_recheck": "14d", "timezone": "UTC", "quiet_hours": "", "allow_senders": "",
        "party_weekly_cap": 3, "quiet_weekends": False,
    }
    values.update(over)
    return load_settings(None, values)


class Recorder:
    """A Sender that keeps what it sent and can fail on cue."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []  # (rcpt, raw)
        self.script: list[Exception | None] = []

    def send(self, raw: bytes, mail_from: str, rcpt_to: list[str], message_id: str) -> None:
        if self.script:
            failure = self.script.pop(0)
            if failure is not None:
                raise failure
        self.sent.extend((r, raw) for r in rcpt_to)

    def close(self) -> None:
        pass

    def to(self, email: str) -> list[EmailMessage]:
        return [message_from_bytes(raw, policy=policy.default)  # type: ignore[misc]
                for rcpt, raw in self.sent if rcpt == email]


def make_world(tmp: Path, start: datetime = START, **over: Any
               ) -> tuple[Loop, FrozenClock, Recorder]:
    st = settings(tmp, **over)
    clock = FrozenClock(start)
    loop = build_loop(st, clock=clock)
    rec = Recorder()
    loop.sender = rec
    for email, name in (("alice@example.com", "Alice Martin"), ("dave@example.com", ""),
                        ("frank@example.com", "Frank")):
        add_member(st, email, name, None, ())
    return loop, clock, rec


@pytest.fixture
def world(tmp_path: Path) -> tuple[Loop, FrozenClock, Recorder]:
    return make_world(tmp_path)


_n = iter(range(1, 10_000))


def intro(loop: Loop, referrer: str, parties: list[str], subject: str = "Intro") -> None:
    n = next(_n)
    raw = (f"From: {referrer}\nTo: {', '.join(parties)}\nSubject: {subject}\n"
           f"Message-ID: <intro-{n}@example.com>\nContent-Type: text/plain; charset=utf-8\n\n"
           "You two should talk.\n")
    deliver(loop, raw)


def deliver(loop: Loop, raw: str) -> None:
    assert isinstance(loop.mailbox, MaildirMailbox)
    loop.mailbox.deliver(raw.replace("\n", "\r\n").encode())


def write_to(loop: Loop, sender: str, to: str, text: str, in_reply_to: str = "") -> None:
    n = next(_n)
    head = f"From: {sender}\nTo: {to}\nSubject: Re: hello\nMessage-ID: <r{n}@reply.example>\n"
    if in_reply_to:
        head += f"In-Reply-To: {in_reply_to}\n"
    deliver(loop, head + f"Content-Type: text/plain; charset=utf-8\n\n{text}\n")


def rows(loop: Loop, **where: Any) -> list[Outbox]:
    with loop.session() as s:
        q = select(Outbox).order_by(Outbox.id)
        for k, v in where.items():
            q = q.where(getattr(Outbox, k) == v)
        return list(s.exec(q))


def text_of(msg: EmailMessage) -> str:
    body = msg.get_body(("plain",))
    assert body is not None
    return body.get_content()  # type: ignore[no-any-return]


def html_of(msg: EmailMessage) -> str:
    body = msg.get_body(("html",))
    assert body is not None
    return body.get_content()  # type: ignore[no-any-return]


# ------------------------------------------------------------------ combined requests


def test_requests_to_one_person_that_fall_due_together_are_one_email(world) -> None:
    loop, clock, rec = world
    intro(loop, "Alice Martin <alice@example.com>", ["Bob <bob@acme.example>",
                                                    "Carol <carol@studio.example>"])
    intro(loop, "dave@example.com", ["bob@acme.example", "Erin <erin@quay.example>"])
    loop.run_once()
    clock.advance(timedelta(days=3))
    loop.run_once()
    to_bob = rec.to("bob@acme.example")
    assert len(to_bob) == 1 and "2 recent introductions" in str(to_bob[0]["Subject"])
    assert len(rec.to("carol@studio.example")) == len(rec.to("erin@quay.example")) == 1
    text = text_of(to_bob[0])
    assert "Carol, introduced by Alice Martin" in text
    assert "Erin, introduced by dave@example.com" in text
    assert "mailto:" not in text and "%40" not in text  # readable addresses, not URLs
    # each introduction has its own one-click addresses: answering the second settles it
    erin_positive = text.split("2. Erin")[1].split("It went well")[1].split()[0]
    write_to(loop, "bob@acme.example", erin_positive, "")
    loop.run_once()
    with loop.session() as s:
        parties = {(p.referral_id, p.email): p for p in s.exec(select(Party))}
    assert parties[(2, "bob@acme.example")].outcome == "positive"
    assert parties[(1, "bob@acme.example")].outcome is None
    appreciation = rec.to("dave@example.com")
    assert len(appreciation) == 1 and "worked" in str(appreciation[0]["Subject"])
    # their one-click answer came with our prefilled words only: nothing is quoted as theirs
    assert "In their words" not in text_of(appreciation[0])


def test_a_free_text_answer_to_a_combined_request_goes_to_a_person(world) -> None:
    loop, clock, rec = world
    intro(loop, "alice@example.com", ["bob@acme.example", "carol@studio.example"])
    intro(loop, "dave@example.com", ["bob@acme.example", "erin@quay.example"])
    loop.run_once()
    clock.advance(timedelta(days=3))
    loop.run_once()
    combined = rec.to("bob@acme.example")[0]
    write_to(loop, "bob@acme.example", str(combined["Reply-To"]), "Yes, great!",
             in_reply_to=str(combined["Message-ID"]))
    loop.run_once()
    with loop.session() as s:
        reply = s.exec(select(Reply)).one()
    assert reply.outcome == "unclear" and "several introductions" in (reply.flagged or "")
    assert [m["To"].addresses[0].addr_spec for m in  # type: ignore[union-attr]
            (message_from_bytes(r, policy=policy.default) for _, r in rec.sent)
            if "Please read" in str(m["Subject"])] == ["ops@network.example"]


# ------------------------------------------------------------------ the weekly cap


def test_weekly_cap_holds_the_fourth_request_until_the_first_is_a_week_old(tmp_path) -> None:
    loop, clock, rec = make_world(tmp_path, max_reminders=0)
    for day in range(4):  # four intros of Bob on four days: four requests on four days
        intro(loop, "alice@example.com", ["bob@acme.example", f"p{day}@x.example"])
        loop.run_once()
        clock.advance(timedelta(days=1))
    first_request = START + timedelta(days=3)
    for _ in range(8):  # day 4 .. day 11
        loop.run_once()
        clock.advance(timedelta(days=1))
    sent_to_bob = [r for r in rows(loop, to_email="bob@acme.example") if r.status == "sent"]
    assert len(sent_to_bob) == 4
    times = sorted(r.sent_at.replace(tzinfo=UTC) for r in sent_to_bob)  # type: ignore[union-attr]
    assert times[:3] == [first_request + timedelta(days=d) for d in range(3)]
    assert times[3] == first_request + timedelta(days=7)  # not day 6: the cap held it
    for i in range(len(times)):  # no 7-day window holds more than 3
        assert sum(1 for t in times if times[i] <= t < times[i] + timedelta(days=7)) <= 3
    # the other parties were never held back by Bob's cap
    assert all(len(rec.to(f"p{d}@x.example")) == 1 for d in range(4))


def test_acknowledgements_over_the_cap_are_dropped_but_opt_out_is_confirmed(tmp_path) -> None:
    loop, clock, rec = make_world(tmp_path, party_weekly_cap=1, max_reminders=0)
    intro(loop, "alice@example.com", ["bob@acme.example", "carol@studio.example"])
    loop.run_once()
    clock.advance(timedelta(days=3))
    loop.run_once()
    request = rec.to("bob@acme.example")[0]
    write_to(loop, "bob@acme.example", str(request["Reply-To"]), "not yet, meeting next month",
             in_reply_to=str(request["Message-ID"]))
    report = loop.run_once()
    assert ("bob@acme.example", "capped",
            "pending_ack not sent: weekly cap reached") in report.steps
    assert len(rec.to("bob@acme.example")) == 1
    write_to(loop, "bob@acme.example", str(request["Reply-To"]), "stop")
    loop.run_once()
    assert [str(m["Subject"]) for m in rec.to("bob@acme.example")][1] == \
        "You won't hear from us again"


def test_members_own_mail_is_never_capped(tmp_path) -> None:
    loop, clock, rec = make_world(tmp_path, party_weekly_cap=1)
    for n in range(3):
        intro(loop, "alice@example.com", [f"b{n}@acme.example", f"c{n}@studio.example"])
    loop.run_once()
    clock.advance(timedelta(days=3))
    loop.run_once()
    for n in range(3):
        req = rec.to(f"b{n}@acme.example")[0]
        write_to(loop, f"b{n}@acme.example", str(req["Reply-To"]), "It went great, thanks!")
    loop.run_once()
    assert len([m for m in rec.to("alice@example.com") if "worked" in str(m["Subject"])]) == 3


# ------------------------------------------------------------------ quiet hours and weekends


def test_quiet_weekend_across_the_dst_change(tmp_path) -> None:
    # Wednesday 21 Oct 2026, 18:00 UTC; the request falls due Saturday 24 Oct; Berlin's
    # clocks go back on Sunday 25 Oct, so Monday 08:00 local is 07:00 UTC
    wednesday = datetime(2026, 10, 21, 18, 0, tzinfo=UTC)
    monday_8 = datetime(2026, 10, 26, 7, 0, tzinfo=UTC)
    loop, clock, rec = make_world(tmp_path, wednesday, timezone="Europe/Berlin",
                                  quiet_hours="20:00-08:00", quiet_weekends=True)
    intro(loop, "alice@example.com", ["bob@acme.example", "carol@studio.example"])
    loop.run_once()
    clock.current = datetime(2026, 10, 24, 18, 0, tzinfo=UTC)
    loop.run_once()
    assert rec.sent == []
    with loop.session() as s:
        assert {p.next_due_at.replace(tzinfo=UTC)  # type: ignore[union-attr]
                for p in s.exec(select(Party))} == {monday_8}
    clock.current = monday_8 - timedelta(minutes=1)
    loop.run_once()
    assert rec.sent == []
    clock.current = monday_8
    loop.run_once()
    assert sorted(r for r, _ in rec.sent) == ["bob@acme.example", "carol@studio.example"]


def test_member_mail_ignores_quiet_hours_party_mail_waits(tmp_path) -> None:
    loop, clock, rec = make_world(tmp_path, quiet_hours="20:00-08:00", feedback_delay="0s")
    intro(loop, "alice@example.com", ["bob@acme.example", "carol@studio.example"])
    loop.run_once()
    request = rec.to("bob@acme.example")[0]
    clock.current = datetime(2026, 10, 5, 22, 0, tzinfo=UTC)
    write_to(loop, "bob@acme.example", str(request["Reply-To"]), "It went really well!")
    loop.run_once()
    assert len(rec.to("alice@example.com")) == 1  # appreciation now
    assert len(rec.to("bob@acme.example")) == 1  # the thank-you waits for the morning
    thanks = rows(loop, kind="thanks_positive")[0]
    assert thanks.next_attempt_at.replace(tzinfo=UTC) == datetime(2026, 10, 6, 8, 0,
                                                                   tzinfo=UTC)
    clock.current = datetime(2026, 10, 6, 8, 0, tzinfo=UTC)
    loop.run_once()
    assert len(rec.to("bob@acme.example")) == 2


# ------------------------------------------------------------------ never to a suppressed address


def test_nothing_to_a_bounced_address_not_even_an_opt_out_confirmation(world) -> None:
    loop, clock, rec = world
    intro(loop, "alice@example.com", ["bob@acme.example", "carol@studio.example"])
    loop.run_once()
    with loop.session() as s:
        s.add(Suppression(email="bob@acme.example", reason="bounce", detail="550 no such user"))
    clock.advance(timedelta(days=3))
    loop.run_once()
    assert rec.to("bob@acme.example") == []
    from service.core.decide import Send
    from service.core.model import Person
    from service.loopbase import PassReport

    with loop.session() as s:
        party = s.exec(select(Party).where(Party.email == "bob@acme.example")).one()
        out = loop.enqueue(s, Send("optout_confirmation", "optout:bob@acme.example",
                                   Person("bob@acme.example"), party.id, party.referral_id),
                           PassReport())
    assert out is None


def test_a_queued_message_is_cancelled_when_its_address_opts_out_before_it_goes(world) -> None:
    loop, clock, rec = world
    intro(loop, "alice@example.com", ["bob@acme.example", "carol@studio.example"])
    loop.run_once()
    clock.advance(timedelta(days=3))
    loop.sender = None  # queue only
    loop.run_once()
    with loop.session() as s:
        s.add(Suppression(email="bob@acme.example", reason="optout", detail="by hand"))
    loop.sender = rec
    loop.flush_outbox()
    assert rec.to("bob@acme.example") == []
    assert {r.to_email: r.status for r in rows(loop)}["bob@acme.example"] == "cancelled"


# ------------------------------------------------------------------ retries, jitter, recovery


def queued_world(tmp: Path, n: int = 1) -> tuple[Loop, FrozenClock, Recorder]:
    loop, clock, rec = make_world(tmp, feedback_delay="0s")
    for i in range(n):
        intro(loop, "alice@example.com", [f"b{i}@acme.example", f"c{i}@studio.example"])
    loop.sender = None
    loop.run_once()
    loop.sender = rec
    return loop, clock, rec


def test_temporary_failures_back_off_with_jitter_then_give_up(tmp_path) -> None:
    loop, clock, rec = queued_world(tmp_path)
    first = rows(loop)[0]
    rec.script = [TemporaryFailure("451 4.3.0 try again later")] * 20
    loop.flush_outbox(limit=1)
    row = rows(loop, id=first.id)[0]
    assert row.status == "pending" and row.attempts == 1 and "451" in (row.last_error or "")
    wait = row.next_attempt_at.replace(tzinfo=UTC) - clock.now()  # type: ignore[union-attr]
    assert timedelta(seconds=30) <= wait <= timedelta(minutes=1)
    for _ in range(30):
        clock.advance(timedelta(hours=7))
        loop.flush_outbox(limit=1)
        row = rows(loop, id=first.id)[0]
        if row.status == "failed":
            break
    assert row.status == "failed" and row.last_error.startswith("gave up after 15 attempts")
    assert rec.to(first.to_email) == []


def test_permanent_failure_keeps_the_servers_answer(tmp_path) -> None:
    loop, _, rec = queued_world(tmp_path)
    rec.script = [PermanentFailure("550 5.1.1 <b0@acme.example>: mailbox unavailable")]
    report = loop.flush_outbox()
    failed = [r for r in rows(loop) if r.status == "failed"]
    assert len(failed) == 1 and failed[0].last_error.startswith("550 5.1.1")
    assert report.failed[0][2].startswith("550 5.1.1")


def test_an_unreachable_server_stops_the_pass(tmp_path) -> None:
    loop, _, rec = queued_world(tmp_path, n=2)
    rec.script = [ServerUnreachable("cannot reach SMTP 127.0.0.1:1")]
    loop.flush_outbox()
    statuses = [(r.status, r.attempts) for r in rows(loop)]
    assert statuses == [("pending", 1), ("pending", 0), ("pending", 0), ("pending", 0)]


def interrupt(loop: Loop, clock: FrozenClock, outbox_id: int) -> None:
    """Leave a row as a worker killed mid-send would: `sending`, lease run out."""
    with loop.session() as s:
        row = s.get(Outbox, outbox_id)
        assert row is not None
        row.status, row.lease_until = "sending", clock.now() - timedelta(seconds=1)


@pytest.mark.parametrize("in_sent, resent, status", [
    (True, 0, "sent"),       # it went out before the crash: found in Sent, not sent again
    (False, 1, "sent"),      # it never left: sent now
    (None, 0, "sending"),    # IMAP cannot tell right now: wait, look again later
])
def test_an_interrupted_send_looks_in_the_sent_folder_first(
        tmp_path, in_sent: bool | None, resent: int, status: str) -> None:
    loop, clock, rec = queued_world(tmp_path)
    row = rows(loop)[0]
    interrupt(loop, clock, row.id)  # type: ignore[arg-type]
    asked: list[str] = []

    def check(message_id: str) -> bool | None:
        asked.append(message_id)
        if in_sent is None:
            raise OSError("IMAP down")
        return in_sent

    loop.sent_check = check
    loop.flush_outbox(limit=1)
    after = rows(loop, id=row.id)[0]
    assert asked == [row.message_id]
    assert len(rec.to(row.to_email)) == resent and after.status == status
    if in_sent:
        assert "found in the Sent folder" in (after.last_error or "")
    if in_sent is None:
        assert after.lease_until.replace(tzinfo=UTC) > clock.now()  # type: ignore[union-attr]


def test_connection_lost_after_data_is_checked_before_a_second_attempt(tmp_path) -> None:
    loop, clock, rec = queued_world(tmp_path)
    row = rows(loop)[0]
    sent_folder: set[str] = set()
    loop.sent_check = lambda mid: mid in sent_folder
    rec.script = [MaybeSent("connection lost after handing over the message")]
    loop.flush_outbox(limit=1)
    assert rows(loop, id=row.id)[0].status == "sending" and rec.sent == []
    sent_folder.add(row.message_id)  # the provider kept a copy: it did go out
    clock.advance(timedelta(hours=1))
    loop.flush_outbox(limit=1)
    assert rows(loop, id=row.id)[0].status == "sent" and rec.sent == []


def test_the_sent_copy_is_made_before_the_row_is_marked_sent(tmp_path) -> None:
    loop, _, _ = queued_world(tmp_path)
    seen: list[str] = []

    def copy(raw: bytes) -> None:
        mid = str(message_from_bytes(raw, policy=policy.default)["Message-ID"]).strip("<>")
        seen.append(rows(loop, message_id=mid)[0].status)

    loop.sent_copy = copy
    loop.flush_outbox(limit=1)
    assert seen == ["sending"]


# ------------------------------------------------------------------ DKIM


def test_dkim_signature_verifies_against_the_public_key(tmp_path) -> None:
    import dkim
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    (tmp_path / "dkim.pem").write_bytes(pem)
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    import base64

    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
    lookups: list[bytes] = []

    def dns(name: bytes, timeout: int = 5) -> bytes | None:
        lookups.append(name)
        return record if name == b"sel2026._domainkey.network.example." else None

    loop, _, rec = make_world(tmp_path, feedback_delay="0s", dkim_selector="sel2026",
                                  dkim_key_file=str(tmp_path / "dkim.pem"))
    from service.app import build_signer

    loop.signer = build_signer(loop.settings)
    intro(loop, "alice@example.com", ["Bob Müller <bob@acme.example>", "carol@studio.example"])
    loop.run_once()
    raw = next(r for rcpt, r in rec.sent if rcpt == "bob@acme.example")
    assert raw.startswith(b"DKIM-Signature:")
    assert dkim.verify(raw, dnsfunc=dns) and lookups
    signed = raw.split(b"\r\n\r\n", 1)[0].split(b" h=", 1)[1].split(b";", 1)[0].lower()
    for header in (b"from", b"to", b"subject", b"date", b"message-id", b"list-unsubscribe",
                   b"list-unsubscribe-post"):
        assert header in signed.replace(b"\r\n", b"").replace(b" ", b"").split(b":")
    # any change to a signed header breaks it
    assert not dkim.verify(raw.replace(b"Subject: ", b"Subject: X", 1), dnsfunc=dns)


def test_dkim_settings_go_together(tmp_path) -> None:
    from service.config import ConfigError, require_for_run

    with pytest.raises(ConfigError, match="INTROLOOP_DKIM_SELECTOR and INTROLOOP_DKIM_KEY_FILE"):
        require_for_run(settings(tmp_path, dkim_selector="s1"))
    with pytest.raises(ConfigError, match="does not exist"):
        require_for_run(settings(tmp_path, dkim_selector="s1",
                                 dkim_key_file=str(tmp_path / "missing.pem")))


# ------------------------------------------------------------------ hostile names and replies

HOSTILE_NAMES = ["<script>alert(1)</script>", "Bob\r\nBcc: x@evil.example",
                 '"Robert"); DROP TABLE party;--', "=?utf-8?q?Bob=0D=0ABcc:_x@evil?=",
                 # no "@": this one reaches the other party's Subject line as a name
                 "=?utf-8?q?Bob=0D=0ABcc:_evil?=",
                 "=?utf-8?q?=3D=3Futf-8=3Fq=3FBob=3D0D=3D0ABcc=3A=5Fx=3F=3D?="]
HOSTILE_REPLY = ('Great! <img src=x onerror="alert(1)"> <a href="http://evil.example">click'
                 '</a>\nBcc: x@evil.example')


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_hostile_name_changes_nothing_but_the_displayed_name(tmp_path, name: str) -> None:
    loop, _, rec = make_world(tmp_path, feedback_delay="0s")
    encoded = name.replace("\r\n", " ")
    deliver(loop, "From: Alice Martin <alice@example.com>\n"
                  f"To: \"{encoded}\" <bob@acme.example>, carol@studio.example\n"
                  "Subject: Intro\nMessage-ID: <hostile@example.com>\n\nMeet.\n")
    loop.run_once()
    check_no_injection(rec)
    req = rec.to("bob@acme.example")[0]
    write_to(loop, "bob@acme.example", str(req["Reply-To"]), HOSTILE_REPLY)
    loop.run_once()
    check_no_injection(rec)
    for msg in rec.to("alice@example.com"):
        html = html_of(msg)
        assert "<script" not in html and "<img" not in html and '<a href="http://evil' not in html
        assert "&lt;img" in html  # the reply is shown, escaped


def check_no_injection(rec: Recorder) -> None:
    for rcpt, raw in rec.sent:
        msg = message_from_bytes(raw, policy=policy.default)
        assert msg["Bcc"] is None and msg["Cc"] is None
        assert [a.addr_spec for a in msg["To"].addresses] == [rcpt]  # type: ignore[union-attr]
        head = raw.split(b"\r\n\r\n", 1)[0]
        assert b"evil" not in head.lower() or b"To:" in head  # only ever inside a name
        for line in head.split(b"\r\n"):
            assert line[:1] in (b" ", b"\t") or b":" in line


def test_hostile_reply_text_is_escaped_in_the_operators_review(world) -> None:
    loop, clock, rec = world
    intro(loop, "alice@example.com", ["bob@acme.example", "carol@studio.example"])
    loop.run_once()
    clock.advance(timedelta(days=3))
    loop.run_once()
    req = rec.to("bob@acme.example")[0]
    write_to(loop, "bob@acme.example", str(req["Reply-To"]),
             'Who are you? <script>alert("x")</script><b>bold</b>')
    loop.run_once()
    review = rec.to("ops@network.example")[0]
    html = html_of(review)
    assert "<script>" not in html and "<b>bold" not in html
    assert "&lt;script&gt;" in html and "&lt;b&gt;bold" in html
    assert '<script>alert("x")</script>' in text_of(review)  # plain text shows it as written


def test_hostile_negative_reply_is_escaped_in_the_lessons_note(world) -> None:
    loop, clock, rec = world
    intro(loop, "alice@example.com", ["bob@acme.example", "carol@studio.example"])
    loop.run_once()
    clock.advance(timedelta(days=3))
    loop.run_once()
    req = rec.to("bob@acme.example")[0]
    write_to(loop, "bob@acme.example", str(req["Reply-To"]),
             "It did not work out, not a fit. <iframe src=//evil.example></iframe>")
    loop.run_once()
    lessons = next(m for m in rec.to("alice@example.com") if "learned" in str(m["Subject"]))
    assert "<iframe" not in html_of(lessons) and "&lt;iframe" in html_of(lessons)


# ------------------------------------------------------------------ threading


def test_replies_thread_under_the_right_conversation(world) -> None:
    loop, clock, rec = world
    intro(loop, "alice@example.com", ["bob@acme.example", "carol@studio.example"])
    loop.run_once()
    clock.advance(timedelta(days=3))
    loop.run_once()
    request = rec.to("bob@acme.example")[0]
    assert str(request["References"]).startswith("<intro-")
    clock.advance(timedelta(days=4))
    loop.run_once()
    reminder = rec.to("bob@acme.example")[1]
    assert reminder["In-Reply-To"] == request["Message-ID"]
    write_to(loop, "bob@acme.example", str(request["Reply-To"]), "yes!")
    loop.run_once()
    thanks = rec.to("bob@acme.example")[2]
    assert thanks["In-Reply-To"] == reminder["Message-ID"]  # the last message that asked
    assert str(thanks["References"]).split() == ["<intro-" + str(request["References"])[7:],
                                                 str(reminder["Message-ID"])]
    # the referrer's appreciation threads under the intro they wrote
    appreciation = rec.to("alice@example.com")[0]
    assert appreciation["References"] == request["References"]


def test_dates_for_a_member_are_in_the_members_timezone(tmp_path) -> None:
    # 23:30 UTC on Monday 5 October is already Tuesday 6 October in Auckland
    late = datetime(2026, 10, 5, 23, 30, tzinfo=UTC)
    loop, _, rec = make_world(tmp_path, late, feedback_delay="0s")
    add_member(loop.settings, "alice@example.com", "Alice Martin", "Pacific/Auckland", ())
    intro(loop, "alice@example.com", ["bob@acme.example", "carol@studio.example"])
    loop.run_once()
    request = rec.to("bob@acme.example")[0]
    assert "Monday 5 October 2026" in text_of(request)  # a party: the network's timezone
    write_to(loop, "bob@acme.example", str(request["Reply-To"]), "Yes, it went well!")
    loop.run_once()
    appreciation = rec.to("alice@example.com")[0]
    assert "Tuesday 6 October 2026" in text_of(appreciation)
