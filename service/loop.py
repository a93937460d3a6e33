"""The loop: inbound mail in, decisions applied to the database, outbound mail queued and sent.

This module orchestrates; it decides nothing itself. Decisions come from `service.core`; the
mailbox, sender, database and templates are handed in (see `service.app` for the real ones).

Guarantees kept here:
- raw bytes are committed before a message is marked done on the server;
- every message is processed in its own transaction; one that raises is quarantined with its
  reason and processing goes on;
- every outgoing message is an outbox row with a unique key and a Message-ID fixed before it is
  sent; nothing is ever written to a suppressed (opted-out or bounced) address.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email import message_from_bytes, policy
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from service.adapters.tables import (
    Heartbeat,
    Inbound,
    MailboxState,
    Member,
    MemberAlias,
    Outbox,
    Party,
    Referral,
    Reply,
    Suppression,
    as_utc,
)
from service.adapters.templates import Renderer
from service.config import Settings
from service.core import headers as h
from service.core import tokens as tk
from service.core.body import parse_message, text_body
from service.core.decide import (
    ACTIVE,
    PartyState,
    PartyStatus,
    Policy,
    Send,
    Step,
    due_step,
    first_due,
    next_sendable,
    reply_step,
)
from service.core.intro import Member as CoreMember
from service.core.intro import Senders
from service.core.model import Classification, Kind, Outcome, Person
from service.core.outgoing import Envelope, build_message, mailto, stable_message_id
from service.core.reader import Classify, ReadContext, Reading, read
from service.core.replytext import extract_reply
from service.core.summary import (
    Month,
    PartyRecord,
    ReferralRecord,
    member_summary,
)
from service.ports import Clock, Mailbox, PermanentFailure, RawMail, Sender, TemporaryFailure

log = structlog.get_logger("introloop")

# Kinds of outgoing mail that carry a party's token and count as asking them.
REQUEST_KINDS = frozenset({"feedback_request", "reminder", "recheck"})
OPERATOR_VERDICTS = {"positive": Outcome.POSITIVE, "negative": Outcome.NEGATIVE,
                     "pending": Outcome.PENDING, "optout": Outcome.OPTOUT, "stop": Outcome.OPTOUT,
                     "yes": Outcome.POSITIVE, "no": Outcome.NEGATIVE}
MAX_INBOUND_BYTES = 25 * 1024 * 1024
SEND_LEASE = timedelta(minutes=10)


@dataclass
class PassReport:
    """What one pass of the loop did, for the CLI and the demo's story."""

    fetched: int = 0
    processed: list[tuple[int, str, str]] = field(default_factory=list)  # (inbound id, kind, reason)
    queued: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, to, key)
    sent: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, to, subject)
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, to, error)

    def merge(self, other: PassReport) -> None:
        """Add another report's lines to this one."""
        self.fetched += other.fetched
        self.processed += other.processed
        self.queued += other.queued
        self.sent += other.sent
        self.failed += other.failed


def content_hash(raw: bytes) -> str:
    """The dedupe key of a message's exact bytes."""
    return hashlib.sha256(raw).hexdigest()


class Loop:
    """One Introloop service: a mailbox, a sender, a database, templates and a clock."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        mailbox: Mailbox | None,
        sender: Sender | None,
        renderer: Renderer,
        classify: Classify,
        clock: Clock,
    ):
        self.settings = settings
        self.engine = engine
        self.mailbox = mailbox
        self.sender = sender
        self.renderer = renderer
        self.classify = classify
        self.clock = clock
        self.secret = settings.secret_bytes()
        self.policy = Policy(
            feedback_delay=settings.feedback_delay,
            reminder_delay=settings.reminder_delay,
            max_reminders=settings.max_reminders,
            pending_recheck=settings.pending_recheck,
            timezone=settings.zone,
            quiet_hours=settings.quiet_hours,
        )
        self.service = Person(settings.address, settings.network_name)
        self.on_event: Callable[[str, dict[str, Any]], None] | None = None
        # called with the bytes of each sent message (IMAP APPEND to Sent, when configured)
        self.sent_copy: Callable[[bytes], object] | None = None

    # ------------------------------------------------------------------ plumbing

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on error."""
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
            yield s

    def _event(self, name: str, **data: Any) -> None:
        log.info(name, **data)
        if self.on_event is not None:
            self.on_event(name, data)

    def _beat(self, s: Session, name: str, detail: str = "") -> None:
        row = s.get(Heartbeat, name)
        now = self.clock.now()
        if row is None:
            s.add(Heartbeat(name=name, at=now, detail=detail))
        else:
            row.at, row.detail = now, detail

    # ------------------------------------------------------------------ one full pass

    def run_once(self) -> PassReport:
        """Fetch and process all new mail, then queue what is due, then send the outbox."""
        report = PassReport()
        report.merge(self.fetch())
        report.merge(self.process_pending())
        report.merge(self.send_due())
        report.merge(self.queue_monthly_summaries())
        report.merge(self.flush_outbox())
        return report

    # ------------------------------------------------------------------ inbound

    def fetch(self) -> PassReport:
        """Store the raw bytes of every new message, then mark each one done on the server."""
        report = PassReport()
        if self.mailbox is None:
            return report
        mb = self.mailbox
        uidvalidity = mb.uidvalidity()
        with self.session() as s:
            state = s.exec(
                select(MailboxState).where(
                    MailboxState.mailbox == mb.name,
                    MailboxState.folder == self.settings.imap_folder,
                )
            ).first()
            if state is not None and uidvalidity is not None and state.uidvalidity != uidvalidity:
                # UIDs from the old UIDVALIDITY mean nothing now: start over; the content
                # hash and Message-ID checks make the re-read harmless.
                self._event("uidvalidity_changed", mailbox=mb.name, old=state.uidvalidity,
                            new=uidvalidity)
                state.uidvalidity, state.last_uid = uidvalidity, 0
            after = state.last_uid if state is not None else 0
        for mail in mb.fetch_new(after):
            stored = self.store_raw(mail, uidvalidity)
            mb.mark_done(mail)  # only now: the bytes are safe in the database
            report.fetched += 1
            if not stored:
                self._event("duplicate_skipped", mailbox=mb.name, uid=mail.uid)
        with self.session() as s:
            self._beat(s, "fetch", mb.name)
        return report

    def store_raw(self, mail: RawMail, uidvalidity: int | None = None) -> bool:
        """Commit the message's bytes (and the UID watermark). False if already stored."""
        digest = content_hash(mail.data)
        try:
            head = message_from_bytes(mail.data[:65536], policy=policy.compat32)
            mid = h.message_id(head)
        except Exception:
            mid = None
        with self.session() as s:
            if mail.uid is not None and uidvalidity is not None:
                self._advance_watermark(s, mail.folder, uidvalidity, mail.uid)
            exists = s.exec(select(Inbound.id).where(Inbound.content_hash == digest)).first()
            if exists is not None:
                return False
            s.add(
                Inbound(
                    mailbox=mail.mailbox,
                    folder=mail.folder,
                    uidvalidity=uidvalidity,
                    uid=mail.uid,
                    message_id=(mid or "")[:998] or None,
                    content_hash=digest,
                    raw=mail.data,
                    size=len(mail.data),
                    received_at=self.clock.now(),
                )
            )
        return True

    def _advance_watermark(self, s: Session, folder: str, uidvalidity: int, uid: int) -> None:
        assert self.mailbox is not None
        state = s.exec(
            select(MailboxState).where(
                MailboxState.mailbox == self.mailbox.name, MailboxState.folder == folder
            )
        ).first()
        if state is None:
            s.add(MailboxState(mailbox=self.mailbox.name, folder=folder,
                               uidvalidity=uidvalidity, last_uid=uid))
        elif state.uidvalidity != uidvalidity:
            state.uidvalidity, state.last_uid = uidvalidity, uid
        elif uid > state.last_uid:
            state.last_uid = uid

    def process_pending(self, limit: int | None = None) -> PassReport:
        """Process every stored message that has not been processed yet, oldest first."""
        report = PassReport()
        with self.session() as s:
            q = select(Inbound.id).where(Inbound.status == "new").order_by(col(Inbound.id))
            ids = list(s.exec(q.limit(limit) if limit else q))
        for inbound_id in ids:
            kind, reason = self.process_one(inbound_id, report)
            report.processed.append((inbound_id, kind, reason))
        return report

    def process_one(self, inbound_id: int, report: PassReport | None = None) -> tuple[str, str]:
        """Process one stored message in its own transaction; quarantine it if anything raises."""
        report = report if report is not None else PassReport()
        try:
            with self.session() as s:
                row = s.get(Inbound, inbound_id)
                if row is None or row.status != "new":
                    return ("skipped", "already processed")
                kind, reason = self._process(s, row, report)
                row.status, row.kind, row.reason = "processed", kind, reason[:2000]
                row.processed_at = self.clock.now()
            self._event("message_processed", inbound=inbound_id, kind=kind, reason=reason)
            return kind, reason
        except Exception as exc:  # the per-message error boundary: keep it, say why, go on
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
            with self.session() as s:
                row = s.get(Inbound, inbound_id)
                if row is not None:
                    row.status, row.reason = "quarantined", reason
                    row.attempts += 1
                    row.processed_at = self.clock.now()
            log.warning("message_quarantined", inbound=inbound_id, reason=reason, exc_info=True)
            return "quarantined", reason

    def read_context(self, s: Session) -> ReadContext:
        """What the pure reader needs, from settings and the members table."""
        return ReadContext(
            service_address=self.settings.address,
            senders=self.senders(s),
            classify=self.classify,
            secret=self.secret,
        )

    def senders(self, s: Session) -> Senders:
        """Members (with aliases) and INTROLOOP_ALLOW_SENDERS."""
        members = []
        aliases: dict[int, list[str]] = {}
        for alias in s.exec(select(MemberAlias)):
            aliases.setdefault(alias.member_id, []).append(alias.email)
        for m in s.exec(select(Member)):
            assert m.id is not None
            members.append(CoreMember(m.email, m.name, tuple(aliases.get(m.id, [])), m.timezone))
        return Senders.build(members, self.settings.allow_senders)

    def _process(self, s: Session, row: Inbound, report: PassReport) -> tuple[str, str]:
        if row.size > MAX_INBOUND_BYTES:
            raise ValueError(f"message of {row.size} bytes is over the {MAX_INBOUND_BYTES} cap")
        msg = parse_message(row.raw)
        ctx = self.read_context(s)
        reading = read(msg, row.raw, ctx)
        row.sender = reading.sender.email if reading.sender else None
        row.subject = reading.subject[:500]

        if row.message_id:
            earlier = s.exec(
                select(Inbound.id).where(
                    Inbound.message_id == row.message_id,
                    Inbound.id != row.id,
                    Inbound.status == "processed",
                )
            ).first()
            if earlier is not None:
                return Kind.IGNORED, f"duplicate of message #{earlier} (same Message-ID)"

        if reading.kind is Kind.BOUNCE:
            return self._on_bounce(s, msg, reading)
        if reading.screening is not None:
            return reading.kind, reading.reason

        # 1. a token or a reference to one of our messages names the conversation
        for token in reading.tokens:
            if token.kind == "u":
                return self._on_operator_verdict(s, row, msg, token.id, reading, report)
            if token.kind == "c":
                return self._on_cancel(s, row, token.id, reading)
            party = s.get(Party, token.id)
            if party is not None:
                return self._on_reply(s, row, msg, party, reading, f"token:{token.kind}", report)
        for ref in reading.our_references:
            out = s.exec(select(Outbox).where(Outbox.message_id == ref)).first()
            if out is None:
                continue
            if out.kind == "unclear_review" and out.party_id is not None:
                reply_id = int(out.key.rsplit(":", 1)[1]) if out.key.startswith("unclear:") else 0
                return self._on_operator_verdict(s, row, msg, reply_id, reading, report)
            if out.party_id is not None and out.to_email == (reading.sender and
                                                             reading.sender.email):
                party = s.get(Party, out.party_id)
                if party is not None:
                    return self._on_reply(s, row, msg, party, reading, f"references:{out.kind}",
                                          report)
            return Kind.REPLY, f"reply to our {out.kind} message #{out.id}; nothing to do"

        # 2. a new introduction
        if reading.kind is Kind.INTRO:
            return self._on_intro(s, row, reading, report)

        # 3. the sender has an open request: a reply that lost its token and references
        if reading.sender is not None:
            party = s.exec(
                select(Party)
                .where(
                    Party.email == reading.sender.email,
                    col(Party.status).in_(
                        [PartyStatus.REQUESTED, PartyStatus.PENDING, PartyStatus.UNCLEAR]
                    ),
                )
                .order_by(col(Party.id).desc())
            ).first()
            if party is not None:
                return self._on_reply(s, row, msg, party, reading, "sender", report)
        return reading.kind, reading.reason

    # -- intros

    def _on_intro(self, s: Session, row: Inbound, reading: Reading, report: PassReport
                  ) -> tuple[str, str]:
        assert reading.referrer is not None
        emails = sorted(p.email for p in reading.parties)
        basis = row.message_id or row.content_hash
        key = hashlib.sha256(
            f"{reading.referrer.email}|{'|'.join(emails)}|{basis}".encode()
        ).hexdigest()
        existing = s.exec(select(Referral).where(Referral.intro_key == key)).first()
        if existing is not None:
            return Kind.IGNORED, f"same intro as referral #{existing.id}; not recorded twice"
        now = self.clock.now()
        referral = Referral(
            referrer_email=reading.referrer.email,
            referrer_name=reading.referrer.name,
            subject=reading.subject[:500],
            intro_message_id=row.message_id,
            intro_key=key,
            inbound_id=row.id,
            introduced_at=now,
        )
        s.add(referral)
        s.flush()
        assert referral.id is not None
        due = first_due(now, self.policy)
        for person in reading.parties:
            suppressed = self._suppressed(s, person.email)
            s.add(
                Party(
                    referral_id=referral.id,
                    email=person.email,
                    name=person.name,
                    status=PartyStatus.OPTEDOUT if suppressed else PartyStatus.SCHEDULED,
                    next_due_at=None if suppressed else due,
                )
            )
        row.referral_id = referral.id
        self._event("referral_recorded", referral=referral.id, referrer=referral.referrer_email,
                    parties=emails, ask_at=due.isoformat())
        return Kind.INTRO, f"referral #{referral.id}: {reading.reason}"

    def _on_cancel(self, s: Session, row: Inbound, referral_id: int, reading: Reading
                   ) -> tuple[str, str]:
        referral = s.get(Referral, referral_id)
        sender = reading.sender.email if reading.sender else ""
        if referral is None or referral.referrer_email != sender:
            return Kind.REPLY, "cancel for a referral this sender did not make; ignored"
        referral.status = "cancelled"
        for party in s.exec(select(Party).where(Party.referral_id == referral_id)):
            if party.status in ACTIVE:
                party.status, party.next_due_at = PartyStatus.CANCELLED, None
        return Kind.REPLY, f"referral #{referral_id} cancelled by its referrer"

    # -- replies

    def _sent_texts(self, s: Session, party_id: int) -> list[str]:
        texts = []
        for out in s.exec(select(Outbox).where(Outbox.party_id == party_id)):
            try:
                text, _ = text_body(parse_message(out.raw))
                texts.append(text)
            except Exception:
                continue
        return texts

    def _on_reply(
        self,
        s: Session,
        row: Inbound,
        msg: Any,
        party: Party,
        reading: Reading,
        matched_by: str,
        report: PassReport,
    ) -> tuple[str, str]:
        assert party.id is not None and row.id is not None
        # strip our own request from the quoted part so its words cannot sway the outcome
        reply = extract_reply(msg, sent_texts=self._sent_texts(s, party.id))
        one_click = next((t.answer for t in reading.tokens if t.answer is not None), None)
        if one_click is not None:
            verdict = Classification(one_click, 1.0, f"one-click:{one_click.value}")
        else:
            verdict = self.classify(reply.text)
        sender = reading.sender.email if reading.sender else ""
        flagged = None
        if sender != party.email and verdict.outcome is not Outcome.OPTOUT:
            # someone else answered for the party (a forward, a colleague, a second address):
            # keep it, but let a person decide rather than counting it silently
            flagged = f"sent from {sender or 'an unknown address'}, not {party.email}"
            verdict = Classification(Outcome.UNCLEAR, verdict.confidence,
                                     f"flagged:other-sender ({verdict.outcome} by {verdict.rule})")
        if verdict.outcome is Outcome.OPTOUT and sender != party.email:
            # "stop" from another address stops mail to that address, not the party's
            party_for_optout = None
        else:
            party_for_optout = party
        reply_row = Reply(
            party_id=party.id,
            inbound_id=row.id,
            from_email=sender,
            text=reply.text[:10000],
            outcome=verdict.outcome,
            confidence=verdict.confidence,
            rule=verdict.rule,
            matched_by=matched_by,
            flagged=flagged,
        )
        s.add(reply_row)
        s.flush()
        assert reply_row.id is not None
        row.party_id, row.referral_id = party.id, party.referral_id
        if verdict.outcome is Outcome.OPTOUT:
            self._suppress(s, sender if party_for_optout is None else party.email, "optout",
                           f"reply #{reply_row.id}")
        state = self._party_state(s, party)
        if party_for_optout is None and verdict.outcome is Outcome.OPTOUT:
            return Kind.REPLY, f"opt-out from {sender} (not the party); that address is suppressed"
        if party.status in (PartyStatus.CANCELLED, PartyStatus.BOUNCED) or (
            party.status == PartyStatus.OPTEDOUT and verdict.outcome is not Outcome.OPTOUT
        ):
            return Kind.REPLY, f"reply recorded; party is {party.status}, nothing sent"
        step = reply_step(
            state, verdict, self.clock.now(), self.policy,
            reply_key=str(reply_row.id), operator=self._operator(),
        )
        self._apply(s, party, step, report, reply_row=reply_row)
        why = f"matched by {matched_by}; {verdict.outcome} ({verdict.rule}"
        why += f", {verdict.confidence:.2f})" + (f"; flagged: {flagged}" if flagged else "")
        return Kind.REPLY, f"reply from party #{party.id}: {why}; {step.note}"

    def _on_operator_verdict(
        self, s: Session, row: Inbound, msg: Any, reply_id: int, reading: Reading,
        report: PassReport,
    ) -> tuple[str, str]:
        sender = reading.sender.email if reading.sender else ""
        allowed = {self.settings.operator} if self.settings.operator else set()
        target = s.get(Reply, reply_id)
        party = s.get(Party, target.party_id) if target and target.party_id else None
        if party is not None:
            referral = s.get(Referral, party.referral_id)
            if referral is not None:
                allowed.add(referral.referrer_email)
        if sender not in allowed or target is None or party is None:
            return Kind.REPLY, f"verdict from {sender or '?'} not accepted (not the operator)"
        text = extract_reply(msg).text
        first = (text.strip().split() or [""])[0].strip(".!,:;").lower()
        outcome = OPERATOR_VERDICTS.get(first)
        if outcome is None:
            return Kind.REPLY, f"operator reply {first!r} is not positive/negative/pending"
        return self.settle(s, reply_id, outcome, sender, report)

    def settle(self, s: Session, reply_id: int, outcome: Outcome, who: str,
               report: PassReport | None = None) -> tuple[str, str]:
        """A person decided an unclear reply: apply it exactly as an automatic verdict."""
        report = report if report is not None else PassReport()
        target = s.get(Reply, reply_id)
        if target is None or target.party_id is None:
            return Kind.REPLY, f"no reply #{reply_id}"
        party = s.get(Party, target.party_id)
        assert party is not None
        target.settled_by, target.settled_outcome = who, outcome
        if outcome is Outcome.OPTOUT:
            self._suppress(s, party.email, "optout", f"settled by {who}")
        verdict = Classification(outcome, 1.0, f"settled-by:{who}")
        step = reply_step(self._party_state(s, party), verdict, self.clock.now(), self.policy,
                          reply_key=f"{reply_id}-settled", operator=None)
        self._apply(s, party, step, report, reply_row=target)
        return Kind.REPLY, f"reply #{reply_id} settled as {outcome} by {who}; {step.note}"

    # -- bounces

    def _on_bounce(self, s: Session, msg: Any, reading: Reading) -> tuple[str, str]:
        assert reading.screening is not None
        failed = set(reading.screening.failed)
        for address in h.recipients_seen(msg):
            tag = tk.tag_of(address, self.settings.address)
            outbox_id = tk.read_bounce_tag(self.secret, tag) if tag else None
            if outbox_id is not None:
                out = s.get(Outbox, outbox_id)
                if out is not None:
                    # VERP names the message exactly; trust it over addresses found in the body
                    failed = {out.to_email}
        if not reading.screening.permanent:
            return Kind.BOUNCE, reading.reason + " (temporary: the sending server retries)"
        ours = [a for a in failed if self._known_recipient(s, a)]
        for address in ours:
            self._suppress(s, address, "bounce", reading.reason[:300])
            for party in s.exec(select(Party).where(Party.email == address)):
                if party.status in ACTIVE:
                    party.status, party.next_due_at = PartyStatus.BOUNCED, None
        note = f"; undeliverable now: {', '.join(sorted(ours))}" if ours else ""
        return Kind.BOUNCE, reading.reason + note

    def _known_recipient(self, s: Session, address: str) -> bool:
        return (
            s.exec(select(Outbox.id).where(Outbox.to_email == address)).first() is not None
            or s.exec(select(Party.id).where(Party.email == address)).first() is not None
        )

    # ------------------------------------------------------------------ state helpers

    def _operator(self) -> Person | None:
        return Person(self.settings.operator, "Operator") if self.settings.operator else None

    def _suppressed(self, s: Session, email: str) -> bool:
        return s.get(Suppression, email.lower()) is not None

    def _suppress(self, s: Session, email: str, reason: str, detail: str) -> None:
        email = email.lower()
        if s.get(Suppression, email) is None:
            s.add(Suppression(email=email, reason=reason, detail=detail))
            self._event("address_suppressed", email=email, reason=reason)
        for party in s.exec(select(Party).where(Party.email == email)):
            if party.status in ACTIVE and reason == "optout":
                party.status, party.next_due_at = PartyStatus.OPTEDOUT, None

    def _party_state(self, s: Session, party: Party) -> PartyState:
        referral = s.get(Referral, party.referral_id)
        assert referral is not None and party.id is not None
        others = s.exec(
            select(Party).where(Party.referral_id == party.referral_id, Party.id != party.id)
        ).all()
        return PartyState(
            party_id=party.id,
            referral_id=party.referral_id,
            person=Person(party.email, party.name),
            referrer=Person(referral.referrer_email, referral.referrer_name),
            others=tuple(Person(o.email, o.name) for o in others),
            status=PartyStatus(party.status),
            requests_sent=party.requests_sent,
            reminders_sent=party.reminders_sent,
            rounds=party.rounds,
            suppressed=self._suppressed(s, party.email),
        )

    def _apply(self, s: Session, party: Party, step: Step, report: PassReport,
               reply_row: Reply | None = None) -> None:
        party.status = step.status
        party.next_due_at = step.next_due_at
        if step.requests_sent is not None:
            party.requests_sent = step.requests_sent
        if step.reminders_sent is not None:
            party.reminders_sent = step.reminders_sent
        if step.rounds is not None:
            party.rounds = step.rounds
        if step.outcome is not None:
            party.outcome, party.outcome_at = step.outcome, self.clock.now()
        for send in step.sends:
            self.enqueue(s, send, report, reply_row=reply_row)

    # ------------------------------------------------------------------ outbound

    def send_due(self) -> PassReport:
        """Queue every request, reminder or recheck whose time has come."""
        report = PassReport()
        now = self.clock.now()
        with self.session() as s:
            due = s.exec(
                select(Party)
                .where(col(Party.status).in_(list(ACTIVE)), col(Party.next_due_at) <= now)
                .order_by(col(Party.next_due_at))
            ).all()
            for party in due:
                referral = s.get(Referral, party.referral_id)
                if referral is None or referral.status != "open":
                    party.status, party.next_due_at = PartyStatus.CANCELLED, None
                    continue
                step = due_step(self._party_state(s, party), now, self.policy)
                self._apply(s, party, step, report)
                self._event("party_step", party=party.id, status=step.status, note=step.note)
            self._beat(s, "send_due")
        return report

    def enqueue(self, s: Session, send: Send, report: PassReport,
                reply_row: Reply | None = None) -> Outbox | None:
        """Render `send` and add it to the outbox, unless its key is already there."""
        existing = s.exec(select(Outbox).where(Outbox.key == send.key)).first()
        if existing is not None:
            return None
        if send.kind != "optout_confirmation" and self._suppressed(s, send.to.email):
            self._event("not_queued_suppressed", kind=send.kind, to=send.to.email)
            return None
        now = self.clock.now()
        context, envelope = self._compose(s, send, reply_row, now)
        rendered = self.renderer.render(send.kind, context)
        msg = build_message(envelope, rendered.subject, rendered.text, rendered.html)
        when = next_sendable(now, self.policy) if send.audience == "party" else now
        row = Outbox(
            key=send.key,
            kind=send.kind,
            to_email=send.to.email,
            message_id=envelope.message_id,
            raw=msg.as_bytes(policy=policy.SMTP),
            subject=rendered.subject,
            referral_id=send.referral_id,
            party_id=send.party_id,
            member_email=send.to.email if send.audience == "member" else None,
            next_attempt_at=when,
        )
        s.add(row)
        s.flush()
        if send.kind in REQUEST_KINDS and send.party_id is not None:
            party = s.get(Party, send.party_id)
            if party is not None:
                party.last_request_message_id = envelope.message_id
        report.queued.append((send.kind, send.to.email, send.key))
        self._event("queued", kind=send.kind, to=send.to.email, key=send.key,
                    message_id=envelope.message_id)
        return row

    def _fmt_date(self, moment: datetime, tz_name: str | None = None) -> str:
        from zoneinfo import ZoneInfo

        tz = ZoneInfo(tz_name) if tz_name else self.settings.zone
        local = moment.astimezone(tz)
        return f"{local:%A} {local.day} {local:%B %Y}"

    def _member_tz(self, s: Session, email: str) -> str | None:
        m = s.exec(select(Member).where(Member.email == email)).first()
        return m.timezone if m and m.timezone else None

    def _compose(self, s: Session, send: Send, reply_row: Reply | None, now: datetime
                 ) -> tuple[dict[str, Any], Envelope]:
        """The template context and the envelope (headers) of one outgoing message."""
        st = self.settings
        ctx: dict[str, Any] = {
            "network": {"name": st.network_name, "address": st.address},
            "recipient": send.to,
            "kind": send.kind,
            **send.facts,
        }
        reply_to: str | None = None
        in_reply_to: str | None = None
        references: list[str] = []
        unsubscribe: str | None = None
        tz_name = self._member_tz(s, send.to.email)

        party = s.get(Party, send.party_id) if send.party_id is not None else None
        referral = s.get(Referral, send.referral_id) if send.referral_id is not None else None
        if party is not None and referral is not None:
            others = [
                Person(o.email, o.name)
                for o in s.exec(
                    select(Party).where(Party.referral_id == referral.id, Party.id != party.id)
                )
            ]
            ctx.update(
                party=Person(party.email, party.name),
                referrer=Person(referral.referrer_email, referral.referrer_name),
                others=others,
                others_names=_names(others),
                referral={
                    "id": referral.id,
                    "subject": referral.subject,
                    "introduced_on": self._fmt_date(as_utc(referral.introduced_at) or now,
                                                    tz_name),
                },
            )
            assert party.id is not None
            if send.audience == "party":
                reply_to = tk.plus_address(st.address, tk.make_token(self.secret, party.id, "x"))
                unsubscribe = tk.plus_address(st.address,
                                              tk.make_token(self.secret, party.id, "s"))
                ctx["reply_address"] = reply_to
                ctx["answers"] = self._answer_links(party.id, others)
                if send.thread_with_request and party.last_request_message_id:
                    in_reply_to = party.last_request_message_id
                elif referral.intro_message_id:
                    # thread our first request under the intro the party already has
                    references = [referral.intro_message_id]
            if reply_row is not None:
                ctx["quote"] = reply_row.text.strip()
                ctx["reply_text"] = reply_row.text.strip()
            else:
                ctx.setdefault("quote", "")
                ctx.setdefault("reply_text", "")
        if "recheck_at" in ctx and isinstance(ctx["recheck_at"], datetime):
            ctx["recheck_on"] = self._fmt_date(ctx.pop("recheck_at"), tz_name)
        if send.kind == "unclear_review" and reply_row is not None and reply_row.id is not None:
            token = tk.make_token(self.secret, reply_row.id, "u")
            reply_to = tk.plus_address(st.address, token)
            ctx["verdict_address"] = reply_to
            ctx["flagged"] = reply_row.flagged or ""
            ctx["verdicts"] = {
                w: mailto(reply_to, f"{w}", w) for w in ("positive", "negative", "pending")
            }
        message_id = stable_message_id(self.secret, send.key, send.kind, st.domain)
        envelope = Envelope(
            sender=self.service,
            to=send.to,
            message_id=message_id,
            date=now,
            reply_to=reply_to,
            in_reply_to=in_reply_to,
            references=tuple(references),
            unsubscribe=unsubscribe,
        )
        return ctx, envelope

    def _answer_links(self, party_id: int, others: list[Person]) -> dict[str, str]:
        who = _names(others) or "them"
        words = {
            "p": ("It went well", f"It went well with {who}."),
            "n": ("Not a fit", f"It did not work out with {who}."),
            "w": ("Not yet", f"We have not connected yet with {who}."),
            "s": ("Stop asking me", "Please stop sending me these check-ins."),
        }
        out = {}
        for kind, (subject, body) in words.items():
            address = tk.plus_address(self.settings.address,
                                      tk.make_token(self.secret, party_id, kind))
            out[tk.ANSWER_KINDS[kind].value] = mailto(address, subject, body)
        return out

    def flush_outbox(self, limit: int = 200) -> PassReport:
        """Send every outbox row that is due; retry temporary failures later with backoff."""
        report = PassReport()
        if self.sender is None:
            return report
        now = self.clock.now()
        with self.session() as s:
            rows = s.exec(
                select(Outbox)
                .where(
                    sa.or_(
                        sa.and_(Outbox.status == "pending", col(Outbox.next_attempt_at) <= now),
                        sa.and_(Outbox.status == "sending", col(Outbox.lease_until) < now),
                    )
                )
                .order_by(col(Outbox.id))
                .limit(limit)
            ).all()
            ids = [r.id for r in rows]
            for r in rows:
                r.status, r.lease_until = "sending", now + SEND_LEASE
        for outbox_id in ids:
            assert outbox_id is not None
            self._send_one(outbox_id, report)
        with self.session() as s:
            self._beat(s, "flush_outbox")
        return report

    def _send_one(self, outbox_id: int, report: PassReport) -> None:
        assert self.sender is not None
        with self.session() as s:
            row = s.get(Outbox, outbox_id)
            assert row is not None
            if row.kind != "optout_confirmation" and self._suppressed(s, row.to_email):
                row.status, row.last_error = "cancelled", "address suppressed before sending"
                return
            raw, to, mid, kind, subject = (row.raw, row.to_email, row.message_id, row.kind,
                                           row.subject)
        envelope_from = tk.plus_address(self.settings.address, tk.bounce_tag(self.secret,
                                                                             outbox_id))
        try:
            self.sender.send(raw, envelope_from, [to], mid)
        except TemporaryFailure as exc:
            with self.session() as s:
                row = s.get(Outbox, outbox_id)
                assert row is not None
                row.attempts += 1
                row.status = "pending"
                row.last_error = str(exc)[:500]
                # exponential backoff: 1, 2, 4 ... minutes, capped at 6 hours
                delay = min(timedelta(minutes=2 ** min(row.attempts - 1, 9)), timedelta(hours=6))
                row.next_attempt_at = self.clock.now() + delay
            report.failed.append((kind, to, f"temporary: {exc}"))
            self._event("send_deferred", outbox=outbox_id, to=to, error=str(exc))
            return
        except PermanentFailure as exc:
            with self.session() as s:
                row = s.get(Outbox, outbox_id)
                assert row is not None
                row.attempts += 1
                row.status, row.last_error = "failed", str(exc)[:500]
            report.failed.append((kind, to, str(exc)))
            self._event("send_failed", outbox=outbox_id, to=to, error=str(exc))
            return
        with self.session() as s:
            row = s.get(Outbox, outbox_id)
            assert row is not None
            row.attempts += 1
            row.status, row.sent_at, row.last_error = "sent", self.clock.now(), None
        report.sent.append((kind, to, subject))
        self._event("sent", outbox=outbox_id, kind=kind, to=to, message_id=mid)
        if self.sent_copy is not None:
            try:
                self.sent_copy(raw)
            except Exception:  # a missing Sent copy must never turn a sent message into a retry
                log.warning("sent_copy_failed", outbox=outbox_id, exc_info=True)

    # ------------------------------------------------------------------ summaries

    def referral_records(self, s: Session, *, referrer: str | None = None,
                         party_email: str | None = None) -> list[ReferralRecord]:
        """Referrals with their parties (and each party's latest reply text) as core records."""
        q = select(Referral)
        if referrer is not None:
            q = q.where(Referral.referrer_email == referrer)
        if party_email is not None:
            q = q.where(col(Referral.id).in_(
                select(Party.referral_id).where(Party.email == party_email)))
        out = []
        for r in s.exec(q.order_by(col(Referral.id))):
            parties = []
            for p in s.exec(select(Party).where(Party.referral_id == r.id)):
                last = s.exec(
                    select(Reply).where(Reply.party_id == p.id).order_by(col(Reply.id).desc())
                ).first()
                parties.append(PartyRecord(
                    person=Person(p.email, p.name),
                    status=p.status,
                    outcome=Outcome(p.outcome) if p.outcome else None,
                    outcome_at=as_utc(p.outcome_at),
                    quote=(last.text.strip()[:300] if last else ""),
                ))
            assert r.id is not None
            out.append(ReferralRecord(
                id=r.id,
                referrer=Person(r.referrer_email, r.referrer_name),
                introduced_at=as_utc(r.introduced_at) or r.introduced_at,
                subject=r.subject,
                parties=tuple(parties),
                status=r.status,
            ))
        return out

    def summaries(self, month: Month, member: str | None = None) -> list[Any]:
        """Each member's summary for `month` (only members with something to report)."""
        out = []
        with self.session() as s:
            members = s.exec(select(Member).order_by(col(Member.email))).all()
            emails = {m.email: m for m in members}
            # senders admitted by INTROLOOP_ALLOW_SENDERS get summaries too
            for r in s.exec(select(Referral.referrer_email).distinct()):
                emails.setdefault(r, Member(email=r))
            for email, m in sorted(emails.items()):
                if member is not None and email != member.lower():
                    continue
                tz = _zone(m.timezone) or self.settings.zone
                summary = member_summary(
                    Person(email, m.name),
                    month,
                    self.referral_records(s, referrer=email),
                    [r for r in self.referral_records(s, party_email=email)
                     if r.referrer.email != email],
                    tz,
                )
                out.append(summary)
        return out

    def queue_summaries(self, month: Month, member: str | None = None) -> PassReport:
        """Queue `month`'s summary for every member with activity (once per member and month)."""
        report = PassReport()
        with self.session() as s:
            for summary in self.summaries(month, member):
                if not summary.has_activity:
                    continue
                send = Send("monthly_summary", f"summary:{summary.member.email}:{month}",
                            summary.member, facts={"summary": summary}, audience="member")
                self.enqueue(s, send, report)
        return report

    def queue_monthly_summaries(self) -> PassReport:
        """On or after the 1st at the summary hour (member's zone), queue last month's summary.

        Run on every tick: the outbox key makes it once per member and month, and a tick that
        missed the 1st still sends it (late, once) instead of skipping it.
        """
        report = PassReport()
        now = self.clock.now()
        with self.session() as s:
            members = {m.email: m for m in s.exec(select(Member))}
            for r in s.exec(select(Referral.referrer_email).distinct()):
                members.setdefault(r, Member(email=r))
        for email, m in members.items():
            tz = _zone(m.timezone) or self.settings.zone
            local = now.astimezone(tz)
            if local.hour < self.settings.summary_hour and local.day == 1:
                continue
            month = Month(local.year, local.month).previous()
            key = f"summary:{email}:{month}"
            with self.session() as s:
                if s.exec(select(Outbox.id).where(Outbox.key == key)).first() is not None:
                    continue
            report.merge(self.queue_summaries(month, email))
        return report


def _zone(name: str | None) -> Any:
    from zoneinfo import ZoneInfo

    try:
        return ZoneInfo(name) if name else None
    except Exception:
        return None


def _names(people: list[Person]) -> str:
    names = [p.display for p in people]
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]
