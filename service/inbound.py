"""Inbound mail: store raw bytes first, then read each message and apply what the core decides."""

from __future__ import annotations

from datetime import timedelta
from email import message_from_bytes, policy
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from service import leases
from service.adapters.db import DatabaseError, is_postgres
from service.adapters.dns import dkim_verifier
from service.adapters.tables import (
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
from service.core import headers as h
from service.core import tokens as tk
from service.core.auth import authenticate
from service.core.body import parse_message, text_body
from service.core.decide import (
    ACTIVE,
    PartyStatus,
    Send,
    first_due,
    next_sendable,
    reply_step,
)
from service.core.intro import DUPLICATE_WINDOW, Senders, asks_to_cancel, intro_key
from service.core.intro import Member as CoreMember
from service.core.model import Classification, Evidence, Kind, Outcome, Person
from service.core.quote import answer_of
from service.core.reader import ReadContext, Reading, read
from service.core.replytext import extract_reply
from service.loopbase import (
    OPERATOR_VERDICTS,
    REQUEST_KINDS,
    LoopBase,
    PassReport,
    Quarantine,
    _names,
    content_hash,
)
from service.ports import RawMail

log = structlog.get_logger("introloop")

# "That is not what I meant" lifts an opt-out read from a reply for this long.
UNDO_WINDOW = timedelta(days=30)

# Reasons of ignored mail that lost nothing: another copy of it was acted on.
NOT_LOST = ("duplicate of message #", "same intro as referral #",
            "a follow-up in the thread of referral #", "same text to the same people as referral #")
CLAIM_BATCH = 20  # inbound rows a worker claims at once: small, so work spreads over workers
STORE_BATCH = 50  # fetched messages committed together (then flagged on the server)...
STORE_BYTES = 8_000_000  # ...or fewer, when they are big


class InboundMixin(LoopBase):
    """Fetching, processing, replies, bounces and operator verdicts."""

    # ------------------------------------------------------------------ inbound

    def fetch(self) -> PassReport:
        """Store the raw bytes of every new message, then mark each one done on the server."""
        report = PassReport()
        if self.mailbox is None or not self.hold_mailbox():
            return report  # another worker reads this mailbox; this one processes and sends
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
        batch: list[RawMail] = []
        for mail in mb.fetch_new(after):
            batch.append(mail)
            if len(batch) >= STORE_BATCH or sum(len(m.data) for m in batch) > STORE_BYTES:
                self._store_and_flag(batch, uidvalidity, report)
                batch = []
        if batch:
            self._store_and_flag(batch, uidvalidity, report)
        with self.session() as s:
            self._beat(s, "fetch", mb.name)
        return report

    def _mailbox_lease(self) -> str:
        assert self.mailbox is not None
        return f"mailbox:{self.mailbox.name}/{self.settings.imap_folder}"

    def hold_mailbox(self) -> bool:
        """Take or renew the right to read the mailbox (one worker at a time; see leases.py).

        A worker that has lost it (it stalled longer than INTROLOOP_MAILBOX_LEASE and another
        took over) drops its IMAP connection, so only the holder keeps one open."""
        assert self.mailbox is not None
        held = leases.acquire(self.engine, self._mailbox_lease(), self.worker,
                              self.settings.mailbox_lease, self.clock.now())
        if held != self.__dict__.get("_holds_mailbox", False):
            self.__dict__["_holds_mailbox"] = held
            self._event("mailbox_lease_taken" if held else "mailbox_lease_elsewhere",
                        mailbox=self.mailbox.name, worker=self.worker)
            if not held:
                self.mailbox.close()
        return held

    @property
    def holds_mailbox(self) -> bool:
        """True while this worker is the one reading the mailbox (as of its last fetch)."""
        return bool(self.__dict__.get("_holds_mailbox", False))

    def release_mailbox(self) -> None:
        """Give up reading the mailbox (clean shutdown), so another worker takes over now."""
        if self.mailbox is not None and self.__dict__.pop("_holds_mailbox", False):
            leases.release(self.engine, self._mailbox_lease(), self.worker)

    def _store_and_flag(self, batch: list[RawMail], uidvalidity: int | None,
                        report: PassReport) -> None:
        assert self.mailbox is not None
        stored = self.store_batch(batch, uidvalidity)
        for mail, new in zip(batch, stored, strict=True):
            self.mailbox.mark_done(mail)  # only now: the bytes are safe in the database
            report.fetched += 1
            if not new:
                self._event("duplicate_skipped", mailbox=self.mailbox.name, uid=mail.uid)

    def store_raw(self, mail: RawMail, uidvalidity: int | None = None) -> bool:
        """Commit the message's bytes (and the UID watermark). False if already stored."""
        return self.store_batch([mail], uidvalidity)[0]

    def store_batch(self, mails: list[RawMail], uidvalidity: int | None = None) -> list[bool]:
        """Commit several messages' bytes and the UID watermark in one transaction (one
        commit per FETCH batch instead of per message); for each, False if already stored.

        A message over INTROLOOP_MAX_MESSAGE_BYTES is stored straight into quarantine and
        never parsed (only its first 64 KB are scanned for the Message-ID)."""
        for attempt in (1, 2):
            try:
                return self._store_batch(mails, uidvalidity)
            except IntegrityError:
                # a second reader stored the same bytes (or the first watermark) just now;
                # once more sees its rows and says "already stored"
                if attempt == 2:
                    raise
        return []

    def _store_batch(self, mails: list[RawMail], uidvalidity: int | None) -> list[bool]:
        out: list[bool] = []
        with self.session() as s:
            seen: set[str] = set()
            for mail in mails:
                out.append(self._store_one(s, mail, uidvalidity, seen))
        for mail, new in zip(mails, out, strict=True):
            if new and len(mail.data) > self.settings.max_message_bytes:
                self._event("message_oversized", mailbox=mail.mailbox, uid=mail.uid,
                            size=len(mail.data), limit=self.settings.max_message_bytes)
        return out

    def _store_one(self, s: Session, mail: RawMail, uidvalidity: int | None,
                   seen: set[str]) -> bool:
        digest = content_hash(mail.data)
        try:
            head = message_from_bytes(mail.data[:65536], policy=policy.compat32)
            mid = h.message_id(head)
        except Exception:
            mid = None
        cap = self.settings.max_message_bytes
        oversized = len(mail.data) > cap
        if mail.uid is not None and uidvalidity is not None:
            self._advance_watermark(s, mail.folder, uidvalidity, mail.uid)
        if digest in seen:
            return False
        seen.add(digest)
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
                status="quarantined" if oversized else "new",
                reason=(f"message of {len(mail.data)} bytes is over the {cap}-byte limit; "
                        "kept unread (raise INTROLOOP_MAX_MESSAGE_BYTES, then retry it)"
                        ) if oversized else None,
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
        """Process every stored message that has not been processed yet, oldest first.

        Several workers share the work: each claims a few messages at a time (`claim_inbound`)
        and processes only what it claimed."""
        report = PassReport()
        done = 0
        while limit is None or done < limit:
            ids = self.claim_inbound(CLAIM_BATCH if limit is None else
                                     min(CLAIM_BATCH, limit - done))
            if not ids:
                break
            for inbound_id in ids:
                kind, reason = self.process_one(inbound_id, report)
                report.processed.append((inbound_id, kind, reason))
            done += len(ids)
        return report

    def claim_inbound(self, n: int) -> list[int]:
        """Claim up to `n` stored messages for this worker (status `claimed`, with a lease).

        Claimable: `new` rows, rows whose claim has expired (their worker died), and this
        worker's own claims (left over after a database outage). PostgreSQL: the SELECT takes
        row locks with SKIP LOCKED, so concurrent claims are disjoint. SQLite drops FOR UPDATE
        silently; there the write transaction itself (BEGIN IMMEDIATE, adapters/db.py) keeps
        the SELECT and the UPDATE together."""
        now = self.clock.now()
        with self.session() as s:
            ids = list(s.exec(
                select(Inbound.id)
                .where(sa.or_(
                    Inbound.status == "new",
                    sa.and_(Inbound.status == "claimed",
                            sa.or_(col(Inbound.lease_until) < now,
                                   Inbound.claimed_by == self.worker)),
                ))
                .order_by(col(Inbound.id))
                .limit(n)
                .with_for_update(skip_locked=True)
            ))
            if ids:
                s.exec(sa.update(Inbound).where(col(Inbound.id).in_(ids)).values(  # type: ignore[call-overload]
                    status="claimed", claimed_by=self.worker,
                    lease_until=now + self.settings.claim_lease))
        return [i for i in ids if i is not None]

    def _mine(self, row: Inbound) -> bool:
        """May this worker process `row`? `new` (nobody claimed it) or claimed by this one."""
        return row.status == "new" or (row.status == "claimed" and row.claimed_by == self.worker)

    def process_one(self, inbound_id: int, report: PassReport | None = None) -> tuple[str, str]:
        """Process one stored message in its own transaction; quarantine it if anything raises.

        The row is locked (PostgreSQL) for the whole transaction and processed only if it is
        still this worker's, so a claim taken over after its lease never runs twice. An
        unusable database is not the message's fault: DatabaseError propagates and the
        message stays claimed, to be processed when the database is back."""
        report = report if report is not None else PassReport()
        try:
            for attempt in (1, 2):
                try:
                    return self._process_locked(inbound_id, report)
                except IntegrityError:
                    # a unique key another worker committed meanwhile (the same intro, queued
                    # mail): once more, in a fresh transaction that sees its work
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")
        except DatabaseError:
            raise
        except Quarantine as exc:
            return self._quarantine(inbound_id, str(exc), traceback=False)
        except Exception as exc:  # the per-message error boundary: keep it, say why, go on
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
            return self._quarantine(inbound_id, reason, traceback=True)

    def _process_locked(self, inbound_id: int, report: PassReport) -> tuple[str, str]:
        with self.session() as s:
            row = s.get(Inbound, inbound_id, with_for_update=True)
            if row is None or not self._mine(row):
                return ("skipped", "already processed or taken over by another worker")
            if row.message_id and is_postgres(self.engine):
                # two copies of one message (other bytes, same Message-ID) on two workers:
                # one after the other, so the second sees the first and is ignored
                s.exec(sa.select(sa.func.pg_advisory_xact_lock(  # type: ignore[call-overload]
                    sa.func.hashtextextended(row.message_id, 0))))
            kind, reason = self._process(s, row, report)
            row.status, row.kind, row.reason = "processed", kind, reason[:2000]
            row.processed_at, row.lease_until = self.clock.now(), None
        self._event("message_processed", inbound=inbound_id, kind=kind, reason=reason)
        return kind, reason

    def _quarantine(self, inbound_id: int, reason: str, *, traceback: bool) -> tuple[str, str]:
        with self.session() as s:
            row = s.get(Inbound, inbound_id, with_for_update=True)
            if row is None or not self._mine(row):
                return ("skipped", "already processed or taken over by another worker")
            row.status, row.reason = "quarantined", reason
            row.attempts += 1
            row.processed_at, row.lease_until = self.clock.now(), None
        log.warning("message_quarantined", inbound=inbound_id, reason=reason, exc_info=traceback)
        return "quarantined", reason

    def read_context(self, s: Session) -> ReadContext:
        """What the pure reader needs, from settings and the members table."""
        return ReadContext(
            service_address=self.settings.address,
            senders=self.senders(s),
            classify=self.classify,
            secret=self.secret,
            trusted_authserv_ids=self.settings.trusted_authserv_id,
            verify_dkim=dkim_verifier(self.settings.verify_dkim),
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
        if row.size > self.settings.max_message_bytes:
            raise Quarantine(f"message of {row.size} bytes is over the "
                             f"{self.settings.max_message_bytes}-byte limit; kept unread (raise "
                             "INTROLOOP_MAX_MESSAGE_BYTES, then retry it)")
        msg = parse_message(row.raw)
        ctx = self.read_context(s)
        reading = read(msg, row.raw, ctx)
        row.sender = reading.sender.email if reading.sender else None
        row.subject = reading.subject[:500]
        kind, reason = self._route(s, row, msg, reading, report)
        if kind in (Kind.IGNORED, Kind.REJECTED) and not reason.startswith(NOT_LOST):
            self._note_set_aside(s, row, ctx.senders, reading, report)
        return kind, reason

    def _route(self, s: Session, row: Inbound, msg: Any, reading: Reading, report: PassReport
               ) -> tuple[str, str]:
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
        if reading.screening is not None and reading.screening.rule == "arf":
            return self._on_complaint(s, msg, reading)
        hinted = reading.screening is not None and reading.screening.evidence is Evidence.HINT
        if reading.screening is not None and not hinted:
            return reading.kind, reading.reason
        self._check_flood(s, row)

        # 1. a token or a reference to one of our messages names the conversation
        for token in reading.tokens:
            if token.kind == "u":
                return self._on_operator_verdict(s, row, msg, token.id, reading, report)
            if token.kind == "c":
                return self._on_cancel(s, row, token.id, reading)
            if token.kind == "r":
                return self._on_undo_optout(s, token.id, reading)
            party = s.get(Party, token.id)
            if party is not None:
                return self._on_reply(s, row, msg, party, reading, f"token:{token.kind}", report)
        for ref in reading.our_references:
            out = s.exec(select(Outbox).where(Outbox.message_id == ref)).first()
            if out is None:
                continue
            if out.kind == "intro_confirmation" and out.referral_id is not None:
                # the member answered our confirmation without its token: "cancel" still counts
                return self._on_cancel(s, row, out.referral_id, reading)
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

        # 3. the sender has an open request: a reply that lost its token and references.
        # Only the From vouches for it here, so a From the trusted server says is forged
        # must not be matched (a token or a reference would have proved receipt instead).
        forged = reading.sender is not None and authenticate(
            msg, from_address=reading.sender.email,
            trusted=self.settings.trusted_authserv_id).rejected
        if reading.sender is not None and not forged:
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

    def _note_set_aside(self, s: Session, row: Inbound, senders: Senders, reading: Reading,
                        report: PassReport) -> None:
        """Mail from a member, a member's other address or a person we asked was ignored or
        rejected: mark it so the operator hears of it (check, health, the daily alert), and
        tell a member whose intro did not count because of how it was sent, at most once a
        week (a member who keeps sending the same way is not sent a note each time)."""
        sender = row.sender
        if not sender:
            return
        member = senders.member_for(sender)
        if member is not None:
            row.set_aside = "member" if member.email.lower() == sender else "alias"
        elif s.exec(select(Party.id).where(Party.email == sender,
                                           col(Party.last_request_message_id).is_not(None))
                    ).first() is not None:
            row.set_aside = "party"
        else:
            return
        self._event("set_aside", inbound=row.id, sender=sender, who=row.set_aside)
        if member is None or not reading.advice:
            return
        year, week, _ = self.clock.now().isocalendar()
        self.enqueue(s, Send(
            kind="set_aside_note", key=f"setaside:{member.email.lower()}:{year}-W{week:02d}",
            to=Person(member.email.lower(), member.name), audience="member",
            facts={"advice": reading.advice, "their_subject": reading.subject,
                   "sent_from": sender},
        ), report)

    def _check_flood(self, s: Session, row: Inbound) -> None:
        """Quarantine human mail beyond INTROLOOP_SENDER_HOURLY_LIMIT messages per sender and
        hour: a flood (a loop, a compromised account) must not become a thousand referrals
        or a thousand messages to strangers. The operator's verdicts are never limited."""
        limit = self.settings.sender_hourly_limit
        if not limit or not row.sender or row.sender == self.settings.operator:
            return
        since = self.clock.now() - timedelta(hours=1)
        recent = s.exec(
            select(sa.func.count()).select_from(Inbound).where(  # type: ignore[arg-type]
                Inbound.sender == row.sender, Inbound.id != row.id,
                Inbound.status == "processed", col(Inbound.processed_at) >= since,
                col(Inbound.kind).in_([Kind.INTRO, Kind.REPLY]),
            )
        ).one()
        if recent >= limit:
            raise Quarantine(f"{row.sender} sent more than {limit} intros/replies within an hour "
                             "(flood guard INTROLOOP_SENDER_HOURLY_LIMIT); retry it later with "
                             "`introloop quarantine retry` if it is genuine")

    # -- intros

    def _on_intro(self, s: Session, row: Inbound, reading: Reading, report: PassReport
                  ) -> tuple[str, str]:
        assert reading.referrer is not None and reading.intro is not None
        intro, referrer = reading.intro, reading.referrer.email
        emails = sorted(p.email for p in reading.parties)
        now = self.clock.now()
        mine = select(Referral).where(Referral.referrer_email == referrer)
        # 1. an intro we already have by its Message-ID: a second copy, or a forward of an
        #    intro that was BCC'd as well (the forwarded original keeps its Message-ID)
        mids = sorted({m for m in (intro.intro_message_id, row.message_id) if m})
        same = s.exec(mine.where(col(Referral.intro_message_id).in_(mids))).first() if mids \
            else None
        if same is not None:
            return Kind.IGNORED, (f"same intro as referral #{same.id} (Message-ID "
                                  f"<{same.intro_message_id}>); not recorded twice")
        # 2. the member writing again in the thread of an intro already recorded, to (some of)
        #    the same people: a follow-up, not a second introduction
        if intro.references:
            for earlier in s.exec(mine.where(
                    col(Referral.intro_message_id).in_(list(intro.references)))):
                known = {p.email for p in s.exec(select(Party).where(
                    Party.referral_id == earlier.id))}
                if set(emails) <= known:
                    return Kind.IGNORED, (f"a follow-up in the thread of referral #{earlier.id} "
                                          "to the same people; not a new intro")
        # 3. the same words to the same people again soon (the member BCC'd twice, or sent
        #    it again from a phone): one intro. Weeks later, the same words are a new one.
        key = intro_key(referrer, emails, intro.body_digest or row.content_hash)
        earlier_same = s.exec(
            select(Referral)
            .where((Referral.intro_key == key) | col(Referral.intro_key).startswith(key + ":"))
            .order_by(col(Referral.introduced_at).desc())
        ).first()
        if earlier_same is not None:
            at = as_utc(earlier_same.introduced_at) or now
            if now - at < DUPLICATE_WINDOW:
                return Kind.IGNORED, (f"same text to the same people as referral "
                                      f"#{earlier_same.id} (recorded {at:%Y-%m-%d %H:%M} UTC); "
                                      "not recorded twice")
            key = f"{key}:{row.id}"  # unique column: a new intro with the same words
        referral = Referral(
            referrer_email=referrer,
            referrer_name=reading.referrer.name,
            subject=(intro.subject or reading.subject)[:500],
            # the id the parties know the intro by: requests thread under it
            intro_message_id=intro.intro_message_id or row.message_id,
            intro_key=key,
            inbound_id=row.id,
            introduced_at=now,
        )
        s.add(referral)
        s.flush()
        assert referral.id is not None
        due = first_due(now, self.policy)
        not_asked: list[Person] = []
        for person in reading.parties:
            suppressed = self._suppressed(s, person.email)
            if suppressed:
                not_asked.append(person)
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
        if self.settings.confirm_intros:
            asked = [p for p in reading.parties if p not in not_asked]
            self.enqueue(s, Send(
                kind="intro_confirmation", key=f"confirm:{referral.id}",
                to=Person(referrer, reading.referrer.name), referral_id=referral.id,
                audience="member",
                facts={"parties": list(reading.parties), "parties_names": _names(asked),
                       "not_asked": not_asked, "not_asked_names": _names(not_asked),
                       "intro_subject": intro.subject or reading.subject,
                       "ask_at": next_sendable(due, self.policy)},
            ), report)
        return Kind.INTRO, f"referral #{referral.id}: {reading.reason}"

    def _on_cancel(self, s: Session, row: Inbound, referral_id: int, reading: Reading
                   ) -> tuple[str, str]:
        referral = s.get(Referral, referral_id)
        sender = reading.sender.email if reading.sender else ""
        member = self.senders(s).member_for(sender) if sender else None
        # the referrer may answer from any of their addresses (aliases)
        who = member.email if member is not None else sender
        if referral is None or referral.referrer_email != who:
            return Kind.REPLY, "cancel for a referral this sender did not make; ignored"
        row.referral_id = referral.id
        # read only the member's new words: the confirmation they quote says "cancel" too
        sent = [text_body(parse_message(o.raw))[0] for o in s.exec(
            select(Outbox).where(Outbox.key == f"confirm:{referral_id}"))]
        text = extract_reply(parse_message(row.raw), sent_texts=sent).text
        if not asks_to_cancel(text):
            return Kind.REPLY, (f"reply to the confirmation of referral #{referral_id} does not "
                                "say cancel; nothing changed")
        if referral.status == "cancelled":
            return Kind.REPLY, f"referral #{referral_id} was already cancelled"
        referral.status = "cancelled"
        stopped = 0
        party_ids = []
        for party in s.exec(select(Party).where(Party.referral_id == referral_id)):
            party_ids.append(party.id)
            if party.status in ACTIVE or party.status == PartyStatus.UNCLEAR:
                party.status, party.next_due_at = PartyStatus.CANCELLED, None
                stopped += 1
        # requests already queued but not sent yet (quiet hours, a retry) go nowhere either
        unsent = 0
        for out in s.exec(select(Outbox).where(
                col(Outbox.party_id).in_(party_ids), Outbox.status == "pending",
                col(Outbox.kind).in_(list(REQUEST_KINDS)))):
            out.status, out.last_error = "cancelled", "referral cancelled by its referrer"
            unsent += 1
        self._event("referral_cancelled", referral=referral_id, by=sender, parties=stopped,
                    unsent=unsent)
        return Kind.REPLY, (f"referral #{referral_id} cancelled by its referrer: {stopped} "
                            f"part{'y' if stopped == 1 else 'ies'} will not be asked"
                            + (f", {unsent} queued request(s) withdrawn" if unsent else ""))

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
        self._lock_party(s, party)
        # strip our own request from the quoted part so its words cannot sway the outcome
        reply = extract_reply(msg, sent_texts=self._sent_texts(s, party.id))
        one_click = next((t.answer for t in reading.tokens if t.answer is not None), None)
        if one_click is not None:
            verdict = Classification(one_click, 1.0, f"one-click:{one_click.value}")
        else:
            verdict = self.classify(answer_of(reply.text))
        sender = reading.sender.email if reading.sender else ""
        flagged = None
        if sender != party.email and verdict.outcome is not Outcome.OPTOUT:
            # someone else answered for the party (a forward, a colleague, a second address):
            # keep it, but let a person decide rather than counting it silently
            flagged = f"sent from {sender or 'an unknown address'}, not {party.email}"
            verdict = Classification(Outcome.UNCLEAR, verdict.confidence,
                                     f"flagged:other-sender ({verdict.outcome} by {verdict.rule})")
        elif one_click is None and verdict.outcome is not Outcome.OPTOUT and s.exec(
                select(Outbox.id).where(Outbox.message_id == party.last_request_message_id,
                                        Outbox.kind == "combined_request")).first():
            # free text answering one email about several introductions may be about any of
            # them (one-click answers carry their own introduction's token): a person decides
            flagged = "answer to a request about several introductions"
            verdict = Classification(Outcome.UNCLEAR, verdict.confidence,
                                     f"flagged:combined ({verdict.outcome} by {verdict.rule})")
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
            reply_key=str(reply_row.id), operator=self._reviewer(state.referrer),
            text=answer_of(reply.text),
        )
        self._apply(s, party, step, report, reply_row=reply_row)
        why = f"matched by {matched_by}; {verdict.outcome} ({verdict.rule}"
        why += f", {verdict.confidence:.2f})" + (f"; flagged: {flagged}" if flagged else "")
        return Kind.REPLY, f"reply from party #{party.id}: {why}; {step.note}"

    def _on_undo_optout(self, s: Session, reply_id: int, reading: Reading) -> tuple[str, str]:
        """"That is not what I meant": lift an opt-out we read from a reply, within
        UNDO_WINDOW, and carry on as before: the misread reply goes to nobody's count, and the
        person is asked again right away. A complaint or a bounce is never lifted this way,
        nor an opt-out the person clicked ("Stop asking me") or the operator decided."""
        reply_row = s.get(Reply, reply_id)
        party = s.get(Party, reply_row.party_id) if reply_row and reply_row.party_id else None
        if reply_row is None or party is None or reply_row.outcome != Outcome.OPTOUT:
            return Kind.REPLY, f"undo link for reply #{reply_id}, which is not an opt-out; ignored"
        self._lock_party(s, party)
        row = s.get(Suppression, party.email)
        now = self.clock.now()
        if row is None or row.reason != "optout":
            state = row.reason if row else "not suppressed"
            return Kind.REPLY, f"undo link for {party.email}: nothing to undo ({state})"
        if now - (as_utc(row.created_at) or now) > UNDO_WINDOW:
            return Kind.REPLY, (f"undo link for {party.email} after {UNDO_WINDOW.days} days; the "
                                "opt-out stays (the operator can lift it)")
        s.delete(row)
        reply_row.settled_by, reply_row.settled_outcome = "undo-link", Outcome.UNCLEAR
        party.outcome, party.outcome_at = None, None
        party.status, party.next_due_at = PartyStatus.PENDING, now
        # the suppression also held back this address in other introductions (open ones, and
        # any made meanwhile): they carry on too, a first request where none was sent yet
        for other in s.exec(select(Party).where(Party.email == party.email, Party.id != party.id,
                                                Party.status == PartyStatus.OPTEDOUT,
                                                col(Party.outcome).is_(None))):
            other.status = PartyStatus.PENDING if other.requests_sent else PartyStatus.SCHEDULED
            other.next_due_at = now
        self._event("optout_undone", party=party.id, email=party.email, reply=reply_id)
        return Kind.REPLY, (f"opt-out of {party.email} undone by its link (reply #{reply_id} was "
                            "misread); they will be asked again now")

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
        self._lock_party(s, party)
        target.settled_by, target.settled_outcome = who, outcome
        if outcome is Outcome.OPTOUT:
            self._suppress(s, party.email, "optout", f"settled by {who}")
        verdict = Classification(outcome, 1.0, f"settled-by:{who}")
        step = reply_step(self._party_state(s, party), verdict, self.clock.now(), self.policy,
                          reply_key=f"{reply_id}-settled", operator=None,
                          text=answer_of(target.text))
        self._apply(s, party, step, report, reply_row=target)
        return Kind.REPLY, f"reply #{reply_id} settled as {outcome} by {who}; {step.note}"

    # -- bounces

    def _on_bounce(self, s: Session, msg: Any, reading: Reading) -> tuple[str, str]:
        assert reading.screening is not None
        failed = set(reading.screening.failed)
        out = self._verp_outbox(s, msg)
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

    def _on_complaint(self, s: Session, msg: Any, reading: Reading) -> tuple[str, str]:
        """A spam complaint (ARF/JMRP): never answered, and its complainant never written to again.

        Someone who pressed "report spam" on a feedback request has said "stop" as loudly as
        they can; asking again would be exactly the stranger-spamming we promise not to do.
        Only addresses we have written to are suppressed: complaint reports are often about
        other mail, redacted or hashed.
        """
        assert reading.screening is not None
        candidates = set(reading.screening.failed)
        out = self._verp_outbox(s, msg)
        if out is not None:
            candidates.add(out.to_email)
        ours = sorted(a for a in candidates if self._known_recipient(s, a))
        for address in ours:
            self._suppress(s, address, "complaint", reading.reason[:300])
        note = f"; never written to again: {', '.join(ours)}" if ours else ""
        return Kind.IGNORED, reading.reason + note

    def _verp_outbox(self, s: Session, msg: Any) -> Outbox | None:
        """The outbox row named by our signed VERP bounce address, if the message came to it."""
        for address in h.recipients_seen(msg):
            tag = tk.tag_of(address, self.settings.address)
            outbox_id = tk.read_bounce_tag(self.secret, tag) if tag else None
            out = s.get(Outbox, outbox_id) if outbox_id is not None else None
            if out is not None:
                return out
        return None

    def _known_recipient(self, s: Session, address: str) -> bool:
        return (
            s.exec(select(Outbox.id).where(Outbox.to_email == address)).first() is not None
            or s.exec(select(Party.id).where(Party.email == address)).first() is not None
        )

