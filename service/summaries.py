"""Monthly summaries: per-member data and queueing them once per member and month."""

from __future__ import annotations

from typing import Any

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
from service.core.decide import (
    Send,
)
from service.core.model import Outcome, Person
from service.core.summary import (
    Month,
    PartyRecord,
    ReferralRecord,
    member_summary,
)
from service.loopbase import (
    LoopBase,
    PassReport,
    _zone,
)

log = structlog.get_logger("introloop")



class SummaryMixin(LoopBase):
    """Summaries for members (and, later, the operator)."""

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


