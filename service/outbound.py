"""Outbound mail: what is due, composing and queueing messages, sending the outbox.

Sent exactly once, at a sensible time:
- every message is an outbox row with a unique key and a Message-ID fixed when it is queued;
- requests to one person that fall due together become one message; quiet hours, quiet
  weekends and the weekly cap (decide.party_slot) hold party mail back, never members' mail;
- a row is claimed (status `sending` with a lease) in its own transaction before the SMTP
  transaction; after SMTP accepts it the copy goes to the IMAP Sent folder, then the row
  becomes `sent`. A row found still `sending` after its lease was interrupted: it is sent
  again only if its Message-ID is not in the Sent folder;
- 4xx and connection trouble retry with exponential backoff and jitter; 5xx is `failed` with
  the server's answer.
"""

from __future__ import annotations

import os
import random
from dataclasses import replace
from datetime import datetime
from email import policy
from typing import Any

import sqlalchemy as sa
import structlog
from sqlmodel import Session, col, select

from service.adapters.tables import (
    Member,
    Outbox,
    Party,
    Referral,
    Reply,
    Suppression,
    as_utc,
)
from service.core import tokens as tk
from service.core.decide import (
    ACTIVE,
    ASKING_KINDS,
    CAP_WINDOW,
    CAPPED_KINDS,
    PartyStatus,
    Send,
    Step,
    batch_for_person,
    due_step,
    next_sendable,
    party_slot,
    retry_delay,
)
from service.core.model import Person
from service.core.outgoing import (
    Addressee,
    Envelope,
    addressee,
    answer_choices,
    build_message,
    mailto,
    names_of,
    stable_message_id,
)
from service.core.quote import answer_of
from service.core.summary import may_quote, one_line
from service.loopbase import (
    REQUEST_KINDS,
    LoopBase,
    PassReport,
)
from service.ports import (
    MaybeSent,
    PermanentFailure,
    ServerUnreachable,
    TemporaryFailure,
)

log = structlog.get_logger("introloop")



class OutboundMixin(LoopBase):
    """Due requests, the outbox and sending."""

    # ------------------------------------------------------------------ outbound

    def send_due(self) -> PassReport:
        """Queue every request, reminder or recheck whose time has come.

        One person's due steps are decided together (`decide.batch_for_person`): requests
        about several introductions become one message, and quiet time or the weekly cap holds
        them all back to the same moment, so they still fall due together then.
        """
        report = PassReport()
        now = self.clock.now()
        with self.session() as s:
            due = s.exec(
                select(Party)
                .where(col(Party.status).in_(list(ACTIVE)), col(Party.next_due_at) <= now)
                .order_by(col(Party.next_due_at), col(Party.id))
                # PostgreSQL: parties another worker is deciding are its own (no-op on SQLite)
                .with_for_update(skip_locked=True)
            ).all()
            by_person: dict[str, list[tuple[Party, Step]]] = {}
            for party in due:
                referral = s.get(Referral, party.referral_id)
                if referral is None or referral.status != "open":
                    party.status, party.next_due_at = PartyStatus.CANCELLED, None
                    continue
                step = due_step(self._party_state(s, party), now, self.policy)
                by_person.setdefault(party.email, []).append((party, step))
            for email, pairs in by_person.items():
                batch = batch_for_person([st for _, st in pairs], now, self.policy,
                                         self._capped_history(s, email, now))
                for party, step in pairs:
                    if batch.hold_until is not None and step.sends:
                        party.next_due_at = batch.hold_until
                        note = f"held until {batch.hold_until.isoformat()} (quiet time or cap)"
                        self._event("party_step", party=party.id, status=party.status, note=note)
                        report.steps.append((party.email, str(party.status), note))
                        continue
                    self._apply(s, party, replace(step, sends=()), report)
                    self._event("party_step", party=party.id, status=step.status, note=step.note)
                    report.steps.append((party.email, str(step.status), step.note))
                if batch.send is not None:
                    self.enqueue(s, batch.send, report)
            self._beat(s, "send_due")
        return report

    def _capped_history(self, s: Session, email: str, now: datetime) -> list[datetime]:
        """When the messages to `email` that count against the weekly cap went (or will go)."""
        since = now - 2 * CAP_WINDOW
        rows = s.exec(
            select(Outbox.sent_at, Outbox.next_attempt_at).where(
                Outbox.to_email == email,
                col(Outbox.kind).in_(list(CAPPED_KINDS)),
                col(Outbox.status).in_(["pending", "sending", "sent"]),
                sa.or_(col(Outbox.sent_at) >= since, col(Outbox.next_attempt_at) >= since),
            )
        ).all()
        out = []
        for sent_at, next_at in rows:
            moment = as_utc(sent_at) or as_utc(next_at)
            if moment is not None:
                out.append(moment)
        return out

    def enqueue(self, s: Session, send: Send, report: PassReport,
                reply_row: Reply | None = None) -> Outbox | None:
        """Render `send` and add it to the outbox, unless its key is already there.

        Never to a suppressed address (the one exception: confirming an opt-out, once). Party
        mail waits for the end of quiet time; an acknowledgement (thanks, "we'll check back")
        that would break the weekly cap is dropped rather than sent days late.
        """
        existing = s.exec(select(Outbox).where(Outbox.key == send.key)).first()
        if existing is not None:
            return None
        if self._blocked(s, send.to.email, send.kind):
            self._event("not_queued_suppressed", kind=send.kind, to=send.to.email)
            return None
        now = self.clock.now()
        when = now
        if send.audience == "party":
            when = next_sendable(now, self.policy)
            if send.kind in CAPPED_KINDS:
                slot = party_slot(now, self.policy, self._capped_history(s, send.to.email, now))
                if slot > when and send.kind not in ASKING_KINDS | {"combined_request"}:
                    self._event("not_queued_cap", kind=send.kind, to=send.to.email,
                                cap=self.policy.party_weekly_cap)
                    report.steps.append((send.to.email, "capped",
                                         f"{send.kind} not sent: weekly cap reached"))
                    return None
                when = slot
        context, envelope = self._compose(s, send, reply_row, now)
        rendered = self.renderer.render(send.kind, context)
        msg = build_message(envelope, rendered.subject, rendered.text, rendered.html)
        raw = msg.as_bytes(policy=policy.SMTP)
        if self.signer is not None:
            raw = self.signer(raw)  # the outbox keeps the exact (signed) bytes SMTP gets
        row = Outbox(
            key=send.key,
            kind=send.kind,
            to_email=send.to.email,
            message_id=envelope.message_id,
            raw=raw,
            subject=rendered.subject,
            referral_id=send.referral_id,
            party_id=send.party_id,
            member_email=send.to.email if send.audience == "member" else None,
            next_attempt_at=when,
        )
        s.add(row)
        s.flush()
        asked = [send.party_id] if send.kind in REQUEST_KINDS else []
        if send.kind == "combined_request":
            asked = [item["party_id"] for item in send.facts.get("items", [])]  # type: ignore[union-attr]
        for party_id in asked:
            party = s.get(Party, party_id) if party_id is not None else None
            if party is not None:
                # reminders and thanks thread under the message that asked
                party.last_request_message_id = envelope.message_id
        report.queued.append((send.kind, send.to.email, send.key))
        self._event("queued", kind=send.kind, to=send.to.email, key=send.key,
                    message_id=envelope.message_id, at=when.isoformat())
        return row

    def _blocked(self, s: Session, email: str, kind: str) -> bool:
        """True when a message of `kind` must not go to `email`: the address is suppressed."""
        row = s.get(Suppression, email.lower())
        if row is None:
            return False
        # the confirmation of an opt-out goes to the address that just opted out, once (its key
        # is per address); a bounced address gets nothing, not even that
        return not (kind == "optout_confirmation" and row.reason == "optout")

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
            "recipient": addressee(send.to),
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
            facts = self._intro_facts(s, party, referral, tz_name, now)
            ctx.update(facts)
            assert party.id is not None
            if send.audience == "party":
                reply_to = tk.plus_address(st.address, tk.make_token(self.secret, party.id, "x"))
                unsubscribe = tk.plus_address(st.address,
                                              tk.make_token(self.secret, party.id, "s"))
                ctx["reply_address"] = reply_to
                choices = answer_choices(self.secret, st.address, party.id,
                                         facts["others_names"])
                ctx["choices"] = choices
                ctx["answers"] = {c.kind: c.url for c in choices}
                ctx["stop_address"] = next(c.address for c in choices if c.kind == "optout")
                if send.kind == "combined_request":
                    ctx["intros"] = self._combined_items(s, send, tz_name, now)
                if send.thread_with_request and party.last_request_message_id:
                    in_reply_to = party.last_request_message_id
                if referral.intro_message_id:
                    # thread under the intro the party already has (and, for a follow-up,
                    # under the request it answers: In-Reply-To joins the References)
                    references = [referral.intro_message_id]
            elif send.audience == "member" and referral.intro_message_id:
                # the referrer wrote the intro: thanks and lessons join that conversation
                references = [referral.intro_message_id]
            if reply_row is not None:
                # members and the operator's review read the answer alone; the whole new
                # text stays in the replies table
                ctx["reply_text"] = answer_of(reply_row.text)
                ctx["quote"] = self._quotable(reply_row, party.id, facts["others_names"])
            else:
                ctx.setdefault("quote", "")
                ctx.setdefault("reply_text", "")
        if send.kind == "optout_confirmation":
            ctx.update(self._undo_optout(reply_row))
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
        if send.kind == "intro_confirmation" and referral is not None and referral.id:
            # replying "cancel" to the confirmation cancels the referral (token kind "c");
            # it threads under the member's own intro
            reply_to = tk.plus_address(st.address, tk.make_token(self.secret, referral.id, "c"))
            ctx["cancel_address"] = reply_to
            ctx["cancel_link"] = mailto(reply_to, "cancel", "cancel")
            ctx["ask_on"] = self._fmt_date(ctx.pop("ask_at"), tz_name)
            references = [referral.intro_message_id] if referral.intro_message_id else []
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

    def _intro_facts(self, s: Session, party: Party, referral: Referral, tz_name: str | None,
                     now: datetime) -> dict[str, Any]:
        """What the templates say about one introduction, seen from `party`."""
        others: list[Addressee] = [
            addressee(Person(o.email, o.name))
            for o in s.exec(
                select(Party).where(Party.referral_id == referral.id, Party.id != party.id)
                .order_by(col(Party.id))
            )
        ]
        return {
            "party": addressee(Person(party.email, party.name)),
            "referrer": addressee(Person(referral.referrer_email, referral.referrer_name)),
            "others": others,
            "others_names": names_of(others),
            "others_short": names_of(others, short=True),
            "referral": {
                "id": referral.id,
                "subject": referral.subject,
                "introduced_on": self._fmt_date(as_utc(referral.introduced_at) or now, tz_name),
            },
        }

    def _combined_items(self, s: Session, send: Send, tz_name: str | None, now: datetime
                        ) -> list[dict[str, Any]]:
        """One entry per introduction a combined request asks about, each with its own
        one-click answers (the tokens name that introduction's party)."""
        out = []
        for item in send.facts.get("items", []):  # type: ignore[union-attr]
            party = s.get(Party, item["party_id"])
            referral = s.get(Referral, item["referral_id"])
            if party is None or referral is None or party.id is None:
                continue
            facts = self._intro_facts(s, party, referral, tz_name, now)
            choices = answer_choices(self.secret, self.settings.address, party.id,
                                     facts["others_names"])
            out.append({
                **facts,
                "choices": choices,
                "answers": {c.kind: c.url for c in choices},
                "asking_again": item["kind"] != "feedback_request",
            })
        return out

    def _undo_optout(self, reply_row: Reply | None) -> dict[str, Any]:
        """The opt-out confirmation's safety net: what we understood, in one line, and a
        one-click "that is not what I meant" (a signed token naming the reply). None for a
        "Stop asking me" click or an operator's settlement: nothing was read into words."""
        if reply_row is None or reply_row.id is None or reply_row.rule.startswith(
                ("one-click", "settled-by")):
            return {"understood": "", "undo_address": "", "undo_link": ""}
        address = tk.plus_address(self.settings.address,
                                  tk.make_token(self.secret, reply_row.id, "r"))
        return {"understood": one_line(answer_of(reply_row.text), 140),
                "undo_address": address,
                "undo_link": mailto(address, "That is not what I meant",
                                    "That is not what I meant: please keep asking me.")}

    def _quotable(self, reply_row: Reply, party_id: int, who: str) -> str:
        """The party's words for the referrer: none when they only sent a one-click answer
        (its prefilled text is ours, not theirs)."""
        text = answer_of(reply_row.text)
        canned = {c.body for c in answer_choices(self.secret, self.settings.address,
                                                  party_id, who)}
        if reply_row.rule.startswith("one-click") and " ".join(text.split()) in canned:
            return ""
        if not may_quote(text):
            return ""  # they asked us to keep it between us ("confidential", "entre nous"...)
        return text  # the answer alone: greeting, sign-off, signature and footers cut

    def flush_outbox(self, limit: int = 200) -> PassReport:
        """Send the due outbox rows, one claimed row at a time (at most `limit` per pass).

        A row is claimed (`sending`, with a lease) in its own committed transaction before the
        SMTP transaction, with SKIP LOCKED on PostgreSQL so two workers never take the same
        row. When the server cannot be reached the pass stops: the other rows wait their turn.
        """
        report = PassReport()
        if self.sender is None:
            return report
        seen: list[int] = []
        while len(seen) < limit:
            claim = self._claim(seen)
            if claim is None:
                break
            outbox_id, interrupted = claim
            seen.append(outbox_id)
            if not self._send_one(outbox_id, report, interrupted=interrupted):
                break
        with self.session() as s:
            self._beat(s, "flush_outbox")
        return report

    def _claim(self, seen: list[int]) -> tuple[int, bool] | None:
        """Take the next due row: (its id, whether an earlier attempt was interrupted)."""
        now = self.clock.now()
        with self.session() as s:
            q = select(Outbox).where(
                sa.or_(
                    sa.and_(Outbox.status == "pending", col(Outbox.next_attempt_at) <= now),
                    # still `sending` after its lease: the worker died or lost the connection
                    # after handing the message over
                    sa.and_(Outbox.status == "sending", col(Outbox.lease_until) < now),
                )
            )
            if seen:
                q = q.where(col(Outbox.id).not_in(seen))
            row = s.exec(q.order_by(col(Outbox.id)).limit(1)
                         .with_for_update(skip_locked=True)).first()
            if row is None or row.id is None:
                return None
            interrupted = row.status == "sending"
            # INTROLOOP_CLAIM_LEASE: how soon another worker may retry if this one dies
            row.status, row.lease_until = "sending", now + self.settings.claim_lease
            return row.id, interrupted

    def _already_sent(self, message_id: str) -> bool | None:
        """Is this message in the Sent folder? None when that cannot be told now."""
        if self.sent_check is None:
            # no IMAP to look in (the local transport overwrites the same file anyway)
            return False
        try:
            return self.sent_check(message_id)
        except Exception as exc:
            log.warning("sent_check_failed", message_id=message_id, error=str(exc))
            return None

    def _send_one(self, outbox_id: int, report: PassReport, *, interrupted: bool = False
                  ) -> bool:
        """Send one claimed row; False when the server is unreachable (stop the pass)."""
        assert self.sender is not None
        with self.session() as s:
            row = s.get(Outbox, outbox_id)
            assert row is not None
            if self._blocked(s, row.to_email, row.kind):
                row.status, row.last_error = "cancelled", "address suppressed before sending"
                return True
            raw, to, mid, kind, subject = (row.raw, row.to_email, row.message_id, row.kind,
                                           row.subject)
        if interrupted:
            found = self._already_sent(mid)
            if found:
                with self.session() as s:
                    row = s.get(Outbox, outbox_id)
                    assert row is not None
                    row.status, row.sent_at = "sent", self.clock.now()
                    row.last_error = ("an earlier attempt was interrupted after sending; found "
                                      "in the Sent folder, not sent again")
                self._event("found_in_sent", outbox=outbox_id, kind=kind, to=to, message_id=mid)
                return True
            if found is None:
                self._later(outbox_id, report, "an earlier attempt was interrupted and the Sent "
                            "folder cannot be checked now", keep_sending=True)
                return True
        envelope_from = tk.plus_address(self.settings.address, tk.bounce_tag(self.secret,
                                                                             outbox_id))
        try:
            self.sender.send(raw, envelope_from, [to], mid)
        except MaybeSent as exc:
            # the server may have it: look in the Sent folder before any second attempt
            self._later(outbox_id, report, str(exc), keep_sending=True)
            return True
        except ServerUnreachable as exc:
            self._later(outbox_id, report, str(exc))
            return False
        except TemporaryFailure as exc:
            self._later(outbox_id, report, str(exc))
            return True
        except PermanentFailure as exc:
            with self.session() as s:
                row = s.get(Outbox, outbox_id)
                assert row is not None
                row.attempts += 1
                row.status, row.last_error = "failed", str(exc)[:500]
            report.failed.append((kind, to, str(exc)))
            self._event("send_failed", outbox=outbox_id, to=to, error=str(exc))
            return True
        # The copy in the Sent folder comes before the status update: if we die in between,
        # the next attempt finds it there and does not send the message again.
        if self.sent_copy is not None:
            try:
                self.sent_copy(raw)
            except Exception:  # a missing Sent copy must never turn a sent message into a retry
                log.warning("sent_copy_failed", outbox=outbox_id, exc_info=True)
        if os.environ.get("INTROLOOP_TEST_CRASH_AFTER_SEND") == "1":
            # test hook (tests/test_outbound_servers.py): die the hardest way right here
            os._exit(70)
        with self.session() as s:
            row = s.get(Outbox, outbox_id)
            assert row is not None
            row.attempts += 1
            row.status, row.sent_at, row.last_error = "sent", self.clock.now(), None
        report.sent.append((kind, to, subject))
        self._event("sent", outbox=outbox_id, kind=kind, to=to, message_id=mid)
        return True

    def _later(self, outbox_id: int, report: PassReport, error: str, *,
               keep_sending: bool = False) -> None:
        """Try again after a backoff with jitter, or give up (`failed`) after many attempts.

        `keep_sending`: the outcome of the last attempt is unknown, so the row stays `sending`
        until the new lease ends; the next attempt then starts by looking in the Sent folder.
        """
        now = self.clock.now()
        with self.session() as s:
            row = s.get(Outbox, outbox_id)
            assert row is not None
            row.attempts += 1
            delay = retry_delay(row.attempts, random.random())
            kind, to = row.kind, row.to_email
            if delay is None:
                row.status = "failed"
                row.last_error = (f"gave up after {row.attempts} attempts"
                                  + (" (it may have gone out: look in the Sent folder before "
                                     "`introloop outbox retry`)" if keep_sending else "")
                                  + f": {error}")[:500]
                report.failed.append((kind, to, row.last_error))
                self._event("send_failed", outbox=outbox_id, to=to, error=row.last_error)
                return
            at = now + delay
            if kind in CAPPED_KINDS or kind == "optout_confirmation":
                at = next_sendable(at, self.policy)  # a retry must not land in quiet hours
            row.last_error = error[:500]
            if keep_sending:
                row.status, row.lease_until = "sending", at
            else:
                row.status, row.next_attempt_at = "pending", at
        report.failed.append((kind, to, f"temporary: {error}"))
        self._event("send_deferred", outbox=outbox_id, to=to, error=error, retry_at=at.isoformat())
