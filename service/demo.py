"""`introloop demo`: the whole loop on sample mail, a local Maildir and a simulated clock.

Nothing leaves the machine: inbound mail is dropped into DIR/maildir, outbound mail is written
to DIR/outgoing/<recipient>/*.eml. The clock is simulated, so a month passes in a second.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import click
from sqlmodel import select

from service.adapters.local import MaildirMailbox
from service.adapters.tables import Outbox
from service.app import FrozenClock, build_loop, local_paths
from service.config import load_settings
from service.core.summary import Month
from service.loop import Loop, PassReport
from service.queries import add_member

DATA = Path(__file__).resolve().parent / "demo_data"
START = datetime(2026, 10, 5, 8, 30, tzinfo=UTC)  # a Monday morning
RUN = "demo"

NICE = {
    "feedback_request": "feedback request",
    "reminder": "reminder",
    "recheck": "second ask after 'not yet'",
    "pending_ack": "'we'll check back' note",
    "thanks_positive": "thank-you",
    "thanks_negative": "thank-you for the honest answer",
    "appreciation": "appreciation ('your referral worked')",
    "lessons": "no-blame lessons note",
    "optout_confirmation": "opt-out confirmation",
    "unclear_review": "request to read an unclear reply",
    "monthly_summary": "monthly summary",
    "network_summary": "the network's monthly summary",
    "intro_confirmation": "intro confirmation",
    "set_aside_note": "note: intro not recorded",
    "combined_request": "combined feedback request",
    "operator_alert": "operator alert",
}


class Story:
    """Prints what happens, one readable line per event (or JSON lines)."""

    def __init__(self, as_json: bool):
        self.as_json = as_json

    def say(self, when: datetime, text: str, **data: Any) -> None:
        """One line of the story."""
        if self.as_json:
            click.echo(json.dumps({"at": when.isoformat(), "event": text, **data},
                                  ensure_ascii=False, default=str))
        else:
            click.echo(f"{when:%a %d %b %H:%M}  {text}")

    def report(self, when: datetime, report: PassReport) -> None:
        """Turn one pass of the loop into story lines."""
        for _, kind, reason in report.processed:
            label = {
                "intro": "intro recorded",
                "reply": "reply read",
                "autoreply": "auto-reply recognised, not an answer, not answered",
                "bounce": "bounce recognised",
                "ignored": "ignored",
                "rejected": "rejected",
            }.get(kind, kind)
            self.say(when, f"{label}: {reason}", kind=kind)
        for party, status, note in report.steps:
            if status == "noresponse":
                what = ("did not answer the second ask (no reminder after an earlier answer)"
                        if "earlier answer" in note
                        else "answered neither the request nor the reminder")
                self.say(when, f"{party} {what}: counted as 'no response', not asked again",
                         party=party)
        for kind, to, subject in report.sent:
            self.say(when, f"sent {NICE.get(kind, kind)} to {to}: “{subject}”", to=to,
                     message=kind)


def _deliver(mailbox: MaildirMailbox, name: str, when: datetime, **fields: str) -> None:
    text = (DATA / name).read_text(encoding="utf-8")
    values = {"date": format_datetime(when), "run": RUN, **fields}
    mailbox.deliver(text.format(**values).replace("\n", "\r\n").encode("utf-8"))


def _request_for(loop: Loop, email: str) -> Outbox:
    with loop.session() as s:
        row = s.exec(
            select(Outbox).where(Outbox.to_email == email,
                                 Outbox.kind.in_(["feedback_request", "recheck"]))  # type: ignore[attr-defined]
            .order_by(Outbox.id.desc())  # type: ignore[union-attr]
        ).first()
        assert row is not None, f"no request was sent to {email}"
        return row


def _reply_fields(loop: Loop, email: str, when: datetime) -> dict[str, str]:
    from email import message_from_bytes, policy

    row = _request_for(loop, email)
    msg = message_from_bytes(row.raw, policy=policy.default)
    return {
        "reply_to": str(msg["Reply-To"]),
        "in_reply_to": row.message_id,
        "subject": row.subject,
        "quoted_date": format_datetime(when - timedelta(days=1)),
    }


def run_demo(directory: Path, *, as_json: bool = False) -> None:
    """Run the demo in `directory` (emptied first) and print the story."""
    directory = Path(directory)
    if directory.exists():
        if not (directory / ".introloop-demo").exists() and any(directory.iterdir()):
            raise click.ClickException(
                f"{directory} exists and is not a demo directory; choose another --dir"
            )
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    (directory / ".introloop-demo").write_text("created by introloop demo\n")

    settings = load_settings(None, {
        "address": "referrals@demo.example",
        "network_name": "Introloop Demo",
        "operator": "ops@demo.example",
        "secret": "demo-secret-not-for-production-use",
        "data_dir": directory,
        "database_url": None,
        "imap_host": None,
        "smtp_host": None,
        "timezone": "Europe/London",
        "feedback_delay": "3d",
        "reminder_delay": "4d",
        "max_reminders": 1,
        "pending_recheck": "14d",
        "quiet_hours": "",
        "summary_hour": 9,
        "allow_senders": "",
    })
    clock = FrozenClock(START)
    loop = build_loop(settings, clock=clock)
    mailbox = loop.mailbox
    assert isinstance(mailbox, MaildirMailbox)
    story = Story(as_json)

    def step(to: datetime) -> None:
        clock.current = to
        story.report(to, loop.run_once())

    if not as_json:
        click.echo(f"Introloop demo in {directory}/ (simulated clock; nothing leaves this "
                   "machine)\n")
    for email, name in (("alice@demo.example", "Alice Martin"), ("dave@demo.example",
                                                                  "Dave Okafor")):
        add_member(settings, email, name, "Europe/London", ())
        story.say(clock.now(), f"member registered: {name} <{email}>")

    t = START + timedelta(minutes=30)
    for name in ("01-intro-alice.eml", "02-intro-dave.eml", "03-newsletter.eml",
                 "04-stranger.eml"):
        _deliver(mailbox, name, t)
    step(t)

    t = START + timedelta(days=3, hours=1)  # the feedback delay has passed
    step(t)

    t += timedelta(days=1)
    _deliver(mailbox, "reply-carol-autoreply.eml", t,
             **_reply_fields(loop, "carol@studio.example", t))
    _deliver(mailbox, "reply-bob-positive.eml", t, **_reply_fields(loop, "bob@acme.example", t))
    step(t)

    t += timedelta(hours=5)
    _deliver(mailbox, "reply-carol-negative.eml", t,
             **_reply_fields(loop, "carol@studio.example", t))
    _deliver(mailbox, "reply-erin-pending.eml", t, **_reply_fields(loop, "erin@bakery.example",
                                                                    t))
    step(t)

    step(START + timedelta(days=7, hours=2))  # Frank has not answered: one reminder
    step(START + timedelta(days=11, hours=2))  # still nothing: Frank counts as no response
    step(START + timedelta(days=18, hours=7))  # two weeks after Erin's "not yet": ask again
    # the 1st of next month, after the summary hour in the members' timezone
    first = Month.of(START, settings.zone).next().start(settings.zone)
    step(first + timedelta(hours=9, minutes=5))
    step(first + timedelta(hours=10))  # a second tick sends nothing twice

    out_dir = local_paths(settings)[1]
    files = sorted(out_dir.rglob("*.eml"))
    if as_json:
        click.echo(json.dumps({"event": "done", "eml_files": [str(f) for f in files]}))
        return
    click.echo(f"\n{len(files)} emails were sent; open them with any mail program:")
    for f in files:
        click.echo(f"  {f}")
    click.echo("\nSee the referrals it recorded:\n"
               f"  INTROLOOP_DATA_DIR={directory} INTROLOOP_ADDRESS=referrals@demo.example "
               "introloop --env-file /dev/null referrals")
