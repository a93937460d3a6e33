"""Monthly summaries: what a member's month looked like, as plain data for the templates. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from service.core.decide import referral_outcome
from service.core.model import Outcome, Person


@dataclass(frozen=True, slots=True)
class PartyRecord:
    """One party of a referral as the summary sees it."""

    person: Person
    status: str
    outcome: Outcome | None
    outcome_at: datetime | None = None
    quote: str = ""


@dataclass(frozen=True, slots=True)
class ReferralRecord:
    """One referral with its parties, for summaries."""

    id: int
    referrer: Person
    introduced_at: datetime
    subject: str
    parties: tuple[PartyRecord, ...]
    status: str = "open"

    @property
    def outcome(self) -> str:
        """worked / did_not_work / mixed / working / open (see decide.referral_outcome)."""
        return referral_outcome([p.outcome for p in self.parties])


@dataclass(frozen=True, slots=True)
class Month:
    """A calendar month."""

    year: int
    month: int

    @classmethod
    def parse(cls, text: str) -> Month:
        """`2026-11` -> Month(2026, 11); ValueError with a clear message otherwise."""
        try:
            y, m = text.strip().split("-")
            month = cls(int(y), int(m))
        except ValueError:
            raise ValueError(f"{text!r} is not a month; write YYYY-MM, e.g. 2026-10") from None
        if not 1 <= month.month <= 12:
            raise ValueError(f"{text!r} is not a month; write YYYY-MM, e.g. 2026-10")
        return month

    @classmethod
    def of(cls, moment: datetime, tz: ZoneInfo) -> Month:
        """The month `moment` falls in, in timezone `tz`."""
        local = moment.astimezone(tz)
        return cls(local.year, local.month)

    def previous(self) -> Month:
        """The month before."""
        return Month(self.year - 1, 12) if self.month == 1 else Month(self.year, self.month - 1)

    def next(self) -> Month:
        """The month after."""
        return Month(self.year + 1, 1) if self.month == 12 else Month(self.year, self.month + 1)

    def start(self, tz: ZoneInfo) -> datetime:
        """Midnight of the 1st in `tz`, as aware UTC."""
        return datetime(self.year, self.month, 1, tzinfo=tz).astimezone(UTC)

    def end(self, tz: ZoneInfo) -> datetime:
        """Midnight of the 1st of the next month in `tz`, as aware UTC (exclusive)."""
        return self.next().start(tz)

    def contains(self, moment: datetime | None, tz: ZoneInfo) -> bool:
        """True when `moment` falls in this month in `tz`."""
        return moment is not None and self.start(tz) <= moment < self.end(tz)

    @property
    def label(self) -> str:
        """`November 2026`."""
        return date(self.year, self.month, 1).strftime("%B %Y")

    @property
    def short(self) -> str:
        """`Nov`."""
        return date(self.year, self.month, 1).strftime("%b")

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"


@dataclass(frozen=True, slots=True)
class ChartBar:
    """One month of the 12-month chart."""

    label: str
    worked: int
    did_not: int
    pending: int

    @property
    def total(self) -> int:
        """All referrals of the month that the bar shows."""
        return self.worked + self.did_not + self.pending


@dataclass(frozen=True, slots=True)
class ReferralLine:
    """One referral in the summary, with each party's answer."""

    id: int
    introduced_on: str
    names: str
    outcome: str
    answers: tuple[tuple[str, str, str], ...]  # (party display name, answer label, quote)
    carried_over: bool = False


@dataclass(frozen=True, slots=True)
class MemberSummary:
    """Everything a member's monthly summary shows."""

    member: Person
    month: Month
    passed: tuple[ReferralLine, ...]
    still_open: tuple[ReferralLine, ...]
    received: tuple[ReferralLine, ...]
    counts: dict[str, int]
    success_rate: float | None
    success_rate_12m: float | None
    trend: str
    quotes: tuple[tuple[str, str], ...]  # (who, what they said)
    thanks_received: int
    lessons: tuple[str, ...]
    chart: tuple[ChartBar, ...] = field(default_factory=tuple)

    @property
    def has_activity(self) -> bool:
        """False when there is nothing to report (such members get no summary by default)."""
        return bool(self.passed or self.still_open or self.received or self.thanks_received)


ANSWER_LABEL = {
    Outcome.POSITIVE: "worked",
    Outcome.NEGATIVE: "did not work",
    Outcome.PENDING: "not yet",
    Outcome.UNCLEAR: "answer being reviewed",
    Outcome.OPTOUT: "prefers not to be asked",
    None: "no answer yet",
}


def _names(people: list[Person]) -> str:
    names = [p.display for p in people]
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def _line(r: ReferralRecord, tz: ZoneInfo, carried: bool = False) -> ReferralLine:
    local = r.introduced_at.astimezone(tz)
    answers = tuple(
        (
            p.person.display,
            "no response" if p.status == "noresponse" else ANSWER_LABEL.get(p.outcome, "?"),
            p.quote if p.outcome in (Outcome.POSITIVE, Outcome.NEGATIVE) else "",
        )
        for p in r.parties
    )
    return ReferralLine(
        id=r.id,
        introduced_on=f"{local.day} {local:%b}",
        names=_names([p.person for p in r.parties]),
        outcome=r.outcome,
        answers=answers,
        carried_over=carried,
    )


def _rate(refs: list[ReferralRecord]) -> float | None:
    decided = [r for r in refs if r.outcome in ("worked", "did_not_work", "mixed", "working")]
    if not decided:
        return None
    good = sum(1 for r in decided if r.outcome in ("worked", "working"))
    return good / len(decided)


def member_summary(
    member: Person,
    month: Month,
    referrals: list[ReferralRecord],
    received: list[ReferralRecord],
    tz: ZoneInfo,
) -> MemberSummary:
    """The member's month. `referrals` are all the member passed (any month, for the chart and
    carried-over items); `received` are referrals by others in which the member is a party."""
    end = month.end(tz)
    this_month = [r for r in referrals if month.contains(r.introduced_at, tz)]
    earlier_open = [
        r
        for r in referrals
        if r.introduced_at < month.start(tz)
        and r.status == "open"
        and r.outcome in ("open", "working")
        and r.introduced_at >= month.start(tz) - timedelta(days=180)
    ]
    received_month = [r for r in received if month.contains(r.introduced_at, tz)]

    counts = {"passed": len(this_month), "answered": 0, "worked": 0, "did_not_work": 0,
              "pending": 0, "no_answer": 0}
    quotes: list[tuple[str, str]] = []
    thanks = 0
    lessons: list[str] = []
    for r in this_month:
        outcome = r.outcome
        if outcome in ("worked", "working"):
            counts["worked"] += 1
        elif outcome in ("did_not_work", "mixed"):
            counts["did_not_work"] += 1
        for p in r.parties:
            if p.outcome is not None and p.outcome is not Outcome.UNCLEAR:
                counts["answered"] += 1
            if p.outcome is Outcome.PENDING:
                counts["pending"] += 1
            if p.outcome is None:
                counts["no_answer"] += 1
    for r in referrals:
        for p in r.parties:
            if month.contains(p.outcome_at, tz) and p.outcome is Outcome.POSITIVE:
                thanks += 1
                if p.quote:
                    quotes.append((p.person.display, p.quote))
            if month.contains(p.outcome_at, tz) and p.outcome is Outcome.NEGATIVE and p.quote:
                lessons.append(f"{p.person.display}: “{p.quote}”")

    chart: list[ChartBar] = []
    m = month
    months = []
    for _ in range(12):
        months.append(m)
        m = m.previous()
    for mm in reversed(months):
        refs = [r for r in referrals if mm.contains(r.introduced_at, tz)]
        chart.append(
            ChartBar(
                mm.short,
                sum(1 for r in refs if r.outcome in ("worked", "working")),
                sum(1 for r in refs if r.outcome in ("did_not_work", "mixed")),
                sum(1 for r in refs if r.outcome == "open"),
            )
        )
    last12 = [r for r in referrals if months[-1].start(tz) <= r.introduced_at < end]
    rate, rate12 = _rate(this_month), _rate(last12)
    prev = _rate([r for r in referrals if month.previous().contains(r.introduced_at, tz)])
    if rate is None or prev is None:
        trend = "steady" if rate is None else "new"
    elif rate > prev + 0.05:
        trend = "up"
    elif rate < prev - 0.05:
        trend = "down"
    else:
        trend = "steady"
    return MemberSummary(
        member=member,
        month=month,
        passed=tuple(_line(r, tz) for r in this_month),
        still_open=tuple(_line(r, tz, carried=True) for r in earlier_open),
        received=tuple(_line(r, tz) for r in received_month),
        counts=counts,
        success_rate=rate,
        success_rate_12m=rate12,
        trend=trend,
        quotes=tuple(quotes[:5]),
        thanks_received=thanks,
        lessons=tuple(lessons[:2]),
        chart=tuple(chart),
    )
