"""Outbound mail: what is due, composing and queueing messages, sending the outbox."""

from __future__ import annotations

from datetime import datetime, timedelta
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
    as_utc,
)
from service.core import tokens as tk
from service.core.decide import (
    ACTIVE,
    PartyStatus,
    Send,
    due_step,
    next_sendable,
)
from service.core.model import Person
from service.core.outgoing import Envelope, build_message, mailto, stable_message_id
from service.loopbase import (
    REQUEST_KINDS,
    SEND_LEASE,
    LoopBase,
    PassReport,
    _names,
)
from service.ports import PermanentFailure, TemporaryFailure

log = structlog.get_logger("introloop")



class OutboundMixin(LoopBase):
    """Due requests, the outbox and sending."""

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
                report.steps.append((party.email, str(step.status), step.note))
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

