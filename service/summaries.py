"""Monthly summaries: building them from the tables, and queueing each exactly once.

Once per recipient and month, whatever happens:
- the outbox key (`summary:<member>:<YYYY-MM>`, `network-summary:<YYYY-MM>`) means a second
  attempt never produces a second email;
- the `summary_log` table remembers which summaries were dealt with (queued, nothing to report,
  address suppressed). A tick reads that small table instead of rebuilding every summary, and
  its unique (kind, recipient, month) key is claimed *first*, in the same transaction as the
  outbox row: a second worker doing the same work at the same moment fails on the key and rolls
  back, leaving the first worker's summary as the only one;
- what is due is computed from the clock on each tick (`core.summary.due_month`): after the 1st
  at INTROLOOP_SUMMARY_HOUR in the recipient's timezone, last month is due; a worker that was
  down on the 1st sends it late, once, when it comes back.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
import structlog
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from service.adapters.tables import (
    Member,
    MemberAlias,
    Outbox,
    Party,
    Referral,
    Reply,
    SummaryLog,
    Suppression,
    as_utc,
)
from service.adapters.templates import Rendered, TemplateError
from service.core.decide import Send
from service.core.intro import Senders
from service.core.model import Outcome, Person
from service.core.quote import answer_of
from service.core.summary import (
    DeliveryRecord,
    MemberSummary,
    Month,
    NetworkSummary,
    PartyRecord,
    ReferralRecord,
    SuppressionRecord,
    UnclearRecord,
    due_month,
    member_summary,
    member_summary_json,
    network_summary,
    network_summary_json,
    one_line,
)
from service.loopbase import REQUEST_KINDS, LoopBase, PassReport, _zone

log = structlog.get_logger("introloop")

# Non-member referrers (admitted by INTROLOOP_ALLOW_SENDERS) are found among recent referrals.
RECENT_REFERRERS = timedelta(days=400)


@dataclass(frozen=True)
class SummaryPreview:
    """One summary as it would be sent (for `introloop summary`)."""

    kind: str  # member | network
    to: str
    summary: MemberSummary | NetworkSummary
    rendered: Rendered
    wanted: bool  # False: nothing to report and INTROLOOP_SUMMARY_EMPTY=skip
    outbox_status: str | None  # already in the outbox: pending / sent / failed ...

    def data(self) -> dict[str, Any]:
        """JSON-friendly: the summary's data, the subject, and whether it would be sent."""
        body = (member_summary_json(self.summary) if isinstance(self.summary, MemberSummary)
                else network_summary_json(self.summary))
        return {"kind": self.kind, "to": self.to, "subject": self.rendered.subject,
                "would_send": self.wanted and self.outbox_status is None,
                "outbox_status": self.outbox_status, **body}


class SummaryMixin(LoopBase):
    """Monthly summaries for members and the operator."""

    summaries_per_tick = 100  # members whose summary one tick may build (the rest: next tick)

    # ------------------------------------------------------------------ reading

    def referral_records(
        self,
        s: Session,
        *,
        referrer: str | None = None,
        party_emails: Iterable[str] | None = None,
        since: Any = None,
        until: Any = None,
        answered_since: Any = None,
    ) -> list[ReferralRecord]:
        """Referrals with their parties as core records, in a fixed number of queries.

        Filters: by `referrer`, by a party's address (`party_emails`), introduced in
        [`since`, `until`), or (with `answered_since`) answered since then although introduced
        earlier. Each party carries the words of the answer that set its outcome, whether they
        may be quoted, and when it was first asked.
        """
        conds: list[Any] = []
        if referrer is not None:
            conds.append(Referral.referrer_email == referrer)
        if party_emails is not None:
            conds.append(col(Referral.id).in_(
                select(Party.referral_id).where(col(Party.email).in_(list(party_emails)))))
        if until is not None:
            conds.append(col(Referral.introduced_at) < until)
        if since is not None:
            recent = col(Referral.introduced_at) >= since
            if answered_since is not None:
                recent = sa.or_(recent, col(Referral.id).in_(
                    select(Party.referral_id).where(col(Party.outcome_at) >= answered_since)))
            conds.append(recent)
        referral_ids = select(Referral.id).where(*conds)
        party_ids = select(Party.id).where(col(Party.referral_id).in_(referral_ids))

        referrals = s.exec(select(Referral).where(*conds).order_by(col(Referral.id))).all()
        parties: dict[int, list[Party]] = {}
        for p in s.exec(select(Party).where(col(Party.referral_id).in_(referral_ids))
                        .order_by(col(Party.id))):
            parties.setdefault(p.referral_id, []).append(p)
        replies: dict[int, list[Reply]] = {}
        for reply in s.exec(select(Reply).where(col(Reply.party_id).in_(party_ids))
                            .order_by(col(Reply.id))):
            assert reply.party_id is not None
            replies.setdefault(reply.party_id, []).append(reply)
        asked = {
            pid: as_utc(at) for pid, at in s.exec(
                select(Outbox.party_id, sa.func.min(Outbox.sent_at))
                .where(col(Outbox.party_id).in_(party_ids), col(Outbox.kind).in_(REQUEST_KINDS),
                       col(Outbox.sent_at).is_not(None))
                .group_by(col(Outbox.party_id)))
        }
        opted_out = set(s.exec(
            select(Suppression.email).where(
                col(Suppression.reason).in_(("optout", "complaint")),
                col(Suppression.email).in_(select(Party.email).where(col(Party.id).in_(
                    party_ids))))))

        out = []
        for r in referrals:
            assert r.id is not None
            records = []
            for p in parties.get(r.id, []):
                assert p.id is not None
                answer = _answer_reply(replies.get(p.id, []), p.outcome)
                records.append(PartyRecord(
                    person=Person(p.email, p.name),
                    status=p.status,
                    outcome=Outcome(p.outcome) if p.outcome else None,
                    outcome_at=as_utc(p.outcome_at),
                    quote=answer_of(answer.text) if answer else "",
                    # the request told them their answer goes to the referrer; still never
                    # quote someone who opted out, or a reply from an address that is not theirs
                    # that no person confirmed
                    shareable=(answer is not None and p.email not in opted_out
                               and (answer.flagged is None or answer.settled_by is not None)),
                    asked_at=asked.get(p.id),
                ))
            out.append(ReferralRecord(
                id=r.id,
                referrer=Person(r.referrer_email, r.referrer_name),
                introduced_at=as_utc(r.introduced_at) or r.introduced_at,
                subject=r.subject,
                parties=tuple(records),
                status=r.status,
            ))
        return out

    def _recipients(self, s: Session, since: Any = None) -> dict[str, tuple[str, ZoneInfo]]:
        """Who gets a member summary: members, and referrers admitted by ALLOW_SENDERS.

        A removed member is no longer a recipient (unless ALLOW_SENDERS still admits them).
        """
        out: dict[str, tuple[str, ZoneInfo]] = {}
        for email, name, tz in s.exec(select(Member.email, Member.name, Member.timezone)):
            out[email] = (name, _zone(tz) or self.settings.zone)
        if self.settings.allow_senders:
            allow = Senders.build([], self.settings.allow_senders)
            q = select(Referral.referrer_email, sa.func.max(Referral.referrer_name))
            if since is not None:
                q = q.where(col(Referral.introduced_at) >= since)
            for email, name in s.exec(q.group_by(col(Referral.referrer_email))):
                if email not in out and allow.allowed(email):
                    out[email] = (name or "", self.settings.zone)
        return out

    def _member_summary(self, s: Session, month: Month, email: str, name: str,
                        tz: ZoneInfo) -> MemberSummary:
        aliases = tuple(s.exec(
            select(MemberAlias.email).join(Member, col(Member.id) == MemberAlias.member_id)
            .where(Member.email == email)))
        # the chart's 12 months and the 12 before them (for the trend); answers to older
        # referrals are left out: looking for them would scan every party for each member
        window = month.back(12).start(tz)
        mine = self.referral_records(s, referrer=email, since=window, until=month.end(tz))
        received = self.referral_records(s, party_emails=[email, *aliases],
                                         since=month.start(tz), until=month.end(tz))
        return member_summary(Person(email, name), month, mine, received, tz, aliases=aliases)

    def summaries(self, month: Month, member: str | None = None) -> list[MemberSummary]:
        """Each member's summary for `month`, including empty ones (see `wants_summary`)."""
        out = []
        with self.session() as s:
            for email, (name, tz) in sorted(self._recipients(s).items()):
                if member is not None and email != member.strip().lower():
                    continue
                out.append(self._member_summary(s, month, email, name, tz))
        return out

    def network_summary(self, month: Month) -> NetworkSummary:
        """The operator's view of `month` (in the network's timezone)."""
        with self.session() as s:
            return self._network_summary(s, month)

    def _network_summary(self, s: Session, month: Month) -> NetworkSummary:
        tz = self.settings.zone
        window = month.back(12).start(tz)
        refs = self.referral_records(s, since=window, until=month.end(tz), answered_since=window)
        # the backlog as it is now: a person can act on it today
        waiting = s.exec(select(Reply).where(Reply.outcome == "unclear",
                                             col(Reply.settled_by).is_(None))
                         .order_by(col(Reply.id))).all()
        party_referral = {pid: rid for pid, rid in s.exec(select(Party.id, Party.referral_id)
                          .where(col(Party.id).in_([r.party_id for r in waiting])))}
        unclear = [UnclearRecord(r.id or 0, r.from_email, r.text, as_utc(r.created_at),
                                 party_referral.get(r.party_id)) for r in waiting]
        suppressions = [
            SuppressionRecord(x.email, x.reason, as_utc(x.created_at), x.detail,
                              _optout_sentence(s, x))
            for x in s.exec(select(Suppression).where(
                col(Suppression.created_at) >= month.start(tz) - timedelta(days=1),
                col(Suppression.created_at) < month.end(tz) + timedelta(days=1)))
        ]
        delivery = [
            DeliveryRecord(o.id or 0, o.kind, o.to_email, o.status, o.attempts,
                           o.last_error or "", as_utc(o.next_attempt_at))
            for o in s.exec(select(Outbox).where(sa.or_(
                Outbox.status == "failed",
                sa.and_(Outbox.status == "pending", col(Outbox.attempts) > 0))))
        ]
        return network_summary(month, refs, tz, unclear=unclear, suppressions=suppressions,
                               delivery=delivery)

    def summary_previews(self, month: Month, *, member: str | None = None,
                         network: bool = False) -> list[SummaryPreview]:
        """Render `month`'s summaries without queueing anything: the members' (all, or one), or
        the operator's. Without `member`, members with nothing to report are left out unless
        INTROLOOP_SUMMARY_EMPTY=send."""
        if network:
            items: list[tuple[str, str, Any, str]] = [
                ("network", self.settings.operator or "(INTROLOOP_OPERATOR not set)",
                 self.network_summary(month), f"network-summary:{month}")]
        else:
            items = [("member", x.member.email, x, f"summary:{x.member.email}:{month}")
                     for x in self.summaries(month, member)]
        out = []
        with self.session() as s:
            for kind, to, summary, key in items:
                wanted = self.wants_summary(summary)
                if not wanted and member is None and not network:
                    continue
                status = s.exec(select(Outbox.status).where(Outbox.key == key)).first()
                rendered = self.renderer.render(
                    "network_summary" if network else "monthly_summary",
                    {"network": {"name": self.settings.network_name,
                                 "address": self.settings.address},
                     "recipient": (self._operator() or Person(to)) if network else summary.member,
                     "kind": "network_summary" if network else "monthly_summary",
                     "summary": summary})
                out.append(SummaryPreview(kind, to, summary, rendered, wanted, status))
        return out

    def wants_summary(self, summary: MemberSummary | NetworkSummary) -> bool:
        """Whether this summary is sent: something to report, or INTROLOOP_SUMMARY_EMPTY=send."""
        return summary.has_activity or self.settings.summary_empty == "send"

    # ------------------------------------------------------------------ queueing

    def queue_summaries(self, month: Month, member: str | None = None) -> PassReport:
        """Queue `month`'s member summaries (or one member's), each at most once ever."""
        report = PassReport()
        with self.session() as s:
            recipients = self._recipients(s)
        for email, (name, tz) in sorted(recipients.items()):
            if member is None or email == member.strip().lower():
                report.merge(self._queue_member(month, email, name, tz))
        return report

    def queue_network_summary(self, month: Month) -> PassReport:
        """Queue the operator's summary of `month` (at most once ever; none without an operator)."""
        if not self.settings.operator:
            return PassReport()
        return self._claim_and_queue("network", self.settings.operator, month,
                                     lambda s: self._network_summary(s, month))

    def queue_monthly_summaries(self) -> PassReport:
        """Run on every tick: queue each summary that is due and not yet dealt with.

        Cheap when there is nothing to do (the usual case): one query for the recipients and
        one on summary_log; summaries are only built for recipients it does not list yet.
        """
        report = PassReport()
        now = self.clock.now()
        st = self.settings
        with self.session() as s:
            recipients = self._recipients(s, since=now - RECENT_REFERRERS)
            due = {email: (due_month(now, tz, st.summary_hour), name, tz)
                   for email, (name, tz) in recipients.items()}
            network_due = due_month(now, st.zone, st.summary_hour) if st.operator else None
            months = {str(m) for m, _, _ in due.values()} | (
                {str(network_due)} if network_due else set())
            done = set(s.exec(select(SummaryLog.kind, SummaryLog.recipient, SummaryLog.month)
                              .where(col(SummaryLog.month).in_(sorted(months))))) if months \
                else set()
        if network_due is not None and not any(
                kind == "network" and m == str(network_due) for kind, _, m in done):
            report.merge(self.queue_network_summary(network_due))
        todo = [(email, v) for email, v in sorted(due.items())
                if ("member", email, str(v[0])) not in done]
        # building a summary takes some 40 ms: a big network's 1st is spread over a few ticks
        # so that reading mail is never held up for long
        for email, (month, name, tz) in todo[: self.summaries_per_tick]:
            report.merge(self._queue_member(month, email, name, tz))
        return report

    def _queue_member(self, month: Month, email: str, name: str, tz: ZoneInfo) -> PassReport:
        return self._claim_and_queue("member", email, month,
                                     lambda s: self._member_summary(s, month, email, name, tz))

    def _claim_and_queue(self, kind: str, email: str, month: Month, build: Any) -> PassReport:
        """Claim (kind, email, month) in summary_log, build the summary and queue it, in one
        transaction. Someone else's claim (another worker, an earlier run) means: done."""
        report = PassReport()
        template = "monthly_summary" if kind == "member" else "network_summary"
        key = f"summary:{email}:{month}" if kind == "member" else f"network-summary:{month}"
        try:
            with self.session() as s:
                if s.exec(select(SummaryLog.id).where(
                        SummaryLog.kind == kind, SummaryLog.month == str(month),
                        *([SummaryLog.recipient == email] if kind == "member" else []))).first():
                    return report
                entry = SummaryLog(kind=kind, recipient=email, month=str(month), status="",
                                   created_at=self.clock.now())
                s.add(entry)
                s.flush()  # take the unique key before doing the work (a racing worker waits)
                summary = build(s)
                if not self.wants_summary(summary):
                    entry.status = "empty"
                elif self._suppressed(s, email):
                    entry.status = "suppressed"
                else:
                    person = (self._operator() or Person(email)) if kind == "network" \
                        else summary.member
                    self.enqueue(s, Send(template, key, person, facts={"summary": summary},
                                         audience=kind if kind == "member" else "operator"),
                                 report)
                    entry.status = "queued"
        except IntegrityError:
            # another worker claimed it between our check and our insert: theirs stands
            self._event("summary_claimed_elsewhere", kind=kind, to=email, month=str(month))
            return PassReport()
        except TemplateError as exc:
            # a broken (operator-edited) template must not stop the tick; retried next tick
            log.error("summary_not_rendered", to=email, month=str(month), error=str(exc))
            report.failed.append((template, email, str(exc)))
            return report
        self._event("summary_" + entry.status, kind=kind, to=email, month=str(month))
        return report


def _answer_reply(replies: list[Reply], outcome: str | None) -> Reply | None:
    """The latest reply whose reading (or a person's verdict on it) gave the party's outcome."""
    if outcome is None:
        return None
    for reply in reversed(replies):
        if (reply.settled_outcome or reply.outcome) == outcome:
            return reply
    return None


def _optout_sentence(s: Session, row: Suppression) -> str:
    """The words an opt-out was read from ("reply #12"), in one line, so the operator sees
    what we understood as "stop" and can lift a misreading."""
    if row.reason != "optout" or not row.detail.startswith("reply #"):
        return ""
    try:
        reply = s.get(Reply, int(row.detail.removeprefix("reply #").split()[0]))
    except ValueError:
        return ""
    if reply is None or reply.rule.startswith("one-click"):
        return ""
    return one_line(answer_of(reply.text), 140)
