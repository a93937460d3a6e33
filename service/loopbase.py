"""Shared state and helpers of the loop: sessions, events, party state, applying a step."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from service.adapters.db import is_postgres, put_heartbeat, translate_errors
from service.adapters.tables import (
    Party,
    Referral,
    Reply,
    Suppression,
)
from service.adapters.templates import Renderer
from service.config import Settings
from service.core.decide import (
    ACTIVE,
    PartyState,
    PartyStatus,
    Policy,
    Step,
)
from service.core.model import Outcome, Person, names_of
from service.core.reader import Classify
from service.ports import Clock, Mailbox, Sender

log = structlog.get_logger("introloop")

# Kinds of outgoing mail that carry a party's token and count as asking them.
REQUEST_KINDS = frozenset({"feedback_request", "reminder", "recheck"})
OPERATOR_VERDICTS = {"positive": Outcome.POSITIVE, "negative": Outcome.NEGATIVE,
                     "pending": Outcome.PENDING, "optout": Outcome.OPTOUT, "stop": Outcome.OPTOUT,
                     "yes": Outcome.POSITIVE, "no": Outcome.NEGATIVE}
MAX_INBOUND_BYTES = 25 * 1024 * 1024  # default of INTROLOOP_MAX_MESSAGE_BYTES (settings win)
SEND_LEASE = timedelta(minutes=10)


class Quarantine(Exception):
    """Keep this message in quarantine with this one-line reason (no traceback is logged)."""

@dataclass
class PassReport:
    """What one pass of the loop did, for the CLI and the demo's story."""

    fetched: int = 0
    # (inbound id, kind, reason)
    processed: list[tuple[int, str, str]] = field(default_factory=list)
    queued: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, to, key)
    sent: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, to, subject)
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, to, error)
    steps: list[tuple[str, str, str]] = field(default_factory=list)  # (party, status, note)

    def merge(self, other: PassReport) -> None:
        """Add another report's lines to this one."""
        self.fetched += other.fetched
        self.processed += other.processed
        self.queued += other.queued
        self.sent += other.sent
        self.failed += other.failed
        self.steps += other.steps


def content_hash(raw: bytes) -> str:
    """The dedupe key of a message's exact bytes."""
    return hashlib.sha256(raw).hexdigest()


class LoopBase:
    """What every part of the loop shares (set up by `Loop.__init__`)."""

    settings: Settings
    engine: Engine
    mailbox: Mailbox | None
    sender: Sender | None
    renderer: Renderer
    classify: Classify
    clock: Clock
    secret: bytes
    policy: Policy
    service: Person
    # Refreshes the OAuth sign-in before it expires; wired by service.app, called by the alerts
    keep_signed_in: Callable[[], object] | None = None
    on_event: Callable[[str, dict[str, Any]], None] | None
    sent_copy: Callable[[bytes], object] | None
    # Was the message with this Message-ID already sent? True / False, or None when it cannot
    # be told right now (IMAP down). Wired by service.app to the IMAP Sent folder.
    sent_check: Callable[[str], bool | None] | None = None
    # Signs each outgoing message's bytes (DKIM), when configured; wired by service.app.
    signer: Callable[[bytes], bytes] | None = None

    # ------------------------------------------------------------------ plumbing

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on error."""
        # down, unreachable, read-only, disk full: not the data's fault. DatabaseError with
        # one line for the worker's log and the CLI; the work stays where it is, for later.
        with translate_errors(self.engine), Session(self.engine, expire_on_commit=False) as s, \
                s.begin():
            yield s

    @property
    def worker(self) -> str:
        """This worker's name in claims and leases (host:pid:random, fixed per Loop)."""
        name = self.__dict__.get("_worker_name")
        if name is None:
            from service.leases import worker_id

            name = self.__dict__["_worker_name"] = worker_id()
        return name

    def _lock_party(self, s: Session, party: Party) -> None:
        """PostgreSQL: lock this party's row and re-read it, so two workers deciding about
        the same person (two replies, a reply and a due reminder) take turns on fresh state.
        SQLite needs nothing: its write transactions (BEGIN IMMEDIATE) already take turns."""
        if is_postgres(self.engine):
            s.refresh(party, with_for_update=True)

    def _event(self, name: str, **data: Any) -> None:
        log.info(name, **data)
        if self.on_event is not None:
            self.on_event(name, data)

    def _beat(self, s: Session, name: str, detail: str = "") -> None:
        put_heartbeat(s, name, self.clock.now(), detail)


    # ------------------------------------------------------------------ state helpers

    def _reviewer(self, referrer: Person) -> Person | None:
        """Who reads replies the classifier could not: INTROLOOP_UNCLEAR_TO decides."""
        if self.settings.unclear_to == "referrer":
            return referrer
        return self._operator()

    def _operator(self) -> Person | None:
        return Person(self.settings.operator, "Operator") if self.settings.operator else None

    def _suppressed(self, s: Session, email: str) -> bool:
        return s.get(Suppression, email.lower()) is not None

    def _suppress(self, s: Session, email: str, reason: str, detail: str) -> None:
        email = email.lower()
        if s.get(Suppression, email) is None:
            s.add(Suppression(email=email, reason=reason, detail=detail,
                              created_at=self.clock.now()))
            self._event("address_suppressed", email=email, reason=reason)
        for party in s.exec(select(Party).where(Party.email == email)):
            # a spam complaint is an opt-out said louder: stop asking, as for "stop"
            if party.status in ACTIVE and reason in ("optout", "complaint"):
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
            answered=party.outcome is not None,
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


def _zone(name: str | None) -> Any:
    from zoneinfo import ZoneInfo

    try:
        return ZoneInfo(name) if name else None
    except Exception:
        return None


def _names(people: list[Person]) -> str:
    return names_of(people)

