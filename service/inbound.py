"""Inbound mail: store raw bytes first, then read each message and apply what the core decides."""

from __future__ import annotations

from email import message_from_bytes, policy
from typing import Any

import structlog
from sqlmodel import Session, col, select

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
from service.core.model import Classification, Kind, Outcome, Person
from service.core.reader import ReadContext, Reading, read
from service.core.replytext import extract_reply
from service.loopbase import (
    MAX_INBOUND_BYTES,
    OPERATOR_VERDICTS,
    REQUEST_KINDS,
    LoopBase,
    PassReport,
    _names,
    content_hash,
)
from service.ports import RawMail

log = structlog.get_logger("introloop")



class InboundMixin(LoopBase):
    """Fetching, processing, replies, bounces and operator verdicts."""

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

