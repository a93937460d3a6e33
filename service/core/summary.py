"""Monthly summaries: a member's month and the network's month, as plain data for templates. Pure.

No database, no clock: the loop hands in records and the month; everything here is a function of
them. A summary describes the month *as it stood at its end* (answers dated later count as "no
answer yet"), so a preview, the scheduled send and a late send after a missed 1st all say the
same thing.

Words used throughout:
- a referral's *outcome* comes from its parties' answers (decide.referral_outcome): worked,
  working (one side says it worked, the other has not answered), did_not_work, mixed (the two
  sides disagree: shown as such, never counted as a failure), open (nothing decisive yet);
- a referral is *decided* once somebody answered "worked" or "did not"; the month it was decided
  in is the month of its first decisive answer. The success rate counts decided referrals:
  worked / (worked + did not), leaving the mixed ones out of both sides of the fraction.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from service.core.decide import referral_outcome
from service.core.model import Outcome, Person, names_of
from service.core.outgoing import mailto

_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")

# ---------------------------------------------------------------------------------- months


@dataclass(frozen=True, slots=True, order=True)
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
        if not 1 <= month.month <= 12 or not 1970 <= month.year <= 9998:
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

    def back(self, n: int) -> Month:
        """The month `n` months earlier (0 = this one)."""
        index = self.year * 12 + self.month - 1 - n
        return Month(index // 12, index % 12 + 1)

    def start(self, tz: ZoneInfo) -> datetime:
        """Midnight of the 1st in `tz`, as aware UTC."""
        return datetime(self.year, self.month, 1, tzinfo=tz).astimezone(UTC)

    def end(self, tz: ZoneInfo) -> datetime:
        """Midnight of the 1st of the next month in `tz`, as aware UTC (exclusive)."""
        return self.next().start(tz)

    def contains(self, moment: datetime | None, tz: ZoneInfo) -> bool:
        """True when `moment` falls in this month in `tz`."""
        return moment is not None and self.start(tz) <= moment < self.end(tz)

    def summary_due_at(self, tz: ZoneInfo, hour: int) -> datetime:
        """When this month's summary is due: the next 1st at `hour` in `tz`, as aware UTC."""
        n = self.next()
        return datetime(n.year, n.month, 1, hour, tzinfo=tz).astimezone(UTC)

    @property
    def name(self) -> str:
        """`November` (English, whatever the machine's locale)."""
        return _MONTHS[self.month - 1]

    @property
    def label(self) -> str:
        """`November 2026`."""
        return f"{self.name} {self.year}"

    @property
    def short(self) -> str:
        """`Nov`."""
        return self.name[:3]

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"


def due_month(now: datetime, tz: ZoneInfo, hour: int) -> Month:
    """The latest month whose summary is due at `now` (the 1st at `hour` in `tz` has passed).

    Before the hour on the 1st it is the month before last: a tick that missed last month's 1st
    still finds that summary due, so it goes out late rather than never.
    """
    this = Month.of(now, tz)
    last = this.previous()
    return last if now >= last.summary_due_at(tz, hour) else last.previous()


# ---------------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class PartyRecord:
    """One party of a referral as the summary sees it (built by the loop from the tables)."""

    person: Person
    status: str
    outcome: Outcome | None
    outcome_at: datetime | None = None
    quote: str = ""  # the party's own words that gave `outcome` (reply text, quotes stripped)
    shareable: bool = True  # False: never show `quote` (opted out, asked for discretion...)
    asked_at: datetime | None = None  # when the first feedback request was sent

    def as_of(self, moment: datetime) -> PartyRecord:
        """This party as it stood at `moment`: a later answer is not known yet."""
        if self.outcome_at is not None and self.outcome_at >= moment:
            status = "requested" if self.asked_at is not None and self.asked_at < moment \
                else "scheduled"
            return replace(self, outcome=None, outcome_at=None, quote="", status=status)
        if self.asked_at is not None and self.asked_at >= moment:
            return replace(self, asked_at=None, status="scheduled")
        return self


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
        """worked / working / did_not_work / mixed / open (see decide.referral_outcome)."""
        return referral_outcome([p.outcome for p in self.parties])

    @property
    def decided_at(self) -> datetime | None:
        """When the first "worked" or "did not" answer came in (None: not decided)."""
        times = [p.outcome_at for p in self.parties if p.outcome_at is not None
                 and p.outcome in (Outcome.POSITIVE, Outcome.NEGATIVE)]
        return min(times) if times else None

    def as_of(self, moment: datetime) -> ReferralRecord:
        """This referral as it stood at `moment`."""
        return replace(self, parties=tuple(p.as_of(moment) for p in self.parties))


@dataclass(frozen=True, slots=True)
class UnclearRecord:
    """A reply nobody could read with confidence, waiting for a person."""

    id: int
    from_email: str
    text: str
    received_at: datetime | None
    referral_id: int | None = None


@dataclass(frozen=True, slots=True)
class SuppressionRecord:
    """An address we no longer write to."""

    email: str
    reason: str  # optout | bounce
    at: datetime | None
    detail: str = ""
    said: str = ""  # an opt-out read from a reply: the sentence, in one line


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """An outgoing message that failed, or is being retried after a temporary failure."""

    id: int
    kind: str
    to_email: str
    status: str  # failed | pending (retrying)
    attempts: int
    error: str
    at: datetime | None


# ---------------------------------------------------------------------------------- words

WORKED, WORKING, DID_NOT, MIXED, OPEN = "worked", "working", "did_not_work", "mixed", "open"

OUTCOME_LABEL = {
    WORKED: "worked",
    WORKING: "going well so far",
    DID_NOT: "did not work out",
    MIXED: "the two sides see it differently",
    OPEN: "waiting for answers",
}

# A party's answer, as the member reads it.
ANSWER_LABEL = {
    "worked": "it worked",
    "did_not": "it did not work out",
    "pending": "not in touch yet",
    "reviewing": "answered (we are reading it)",
    "no_answer": "no answer yet",
    "no_response": "did not answer",
}

_CLOSED = {"noresponse", "optedout", "bounced", "cancelled"}


def answer_state(p: PartyRecord) -> str:
    """worked / did_not / pending / reviewing / no_answer / no_response for one party."""
    if p.outcome is Outcome.POSITIVE:
        return "worked"
    if p.outcome is Outcome.NEGATIVE:
        return "did_not"
    if p.outcome is Outcome.PENDING:
        return "pending"
    if p.outcome is Outcome.UNCLEAR:
        return "reviewing"
    if p.outcome is Outcome.OPTOUT or p.status in _CLOSED:
        # an opt-out is private: the referrer only learns that no answer came
        return "no_response"
    return "no_answer"


# ---------------------------------------------------------------------------------- quotes

_SALUTATION = re.compile(
    r"^\s*(?i:hi|hello|hey|dear|hallo|hoi|bonjour|salut|hola|ciao|moin|servus)"
    r"(?:\s+[A-Z][\w.'-]*){0,3}\s*[,!:.]?\s*\n")
# A sign-off line ("Thanks!", "Best, Bob Chen") and up to two short lines after it (name,
# title). Never the first line, and never a sentence that merely starts with "Thanks".
_SIGNOFF = re.compile(
    r"\n\s*(?i:thanks|thank you|many thanks|best|best regards|regards|kind regards|cheers|"
    r"cordialement|merci|gr(?:ü|ue)(?:ß|ss)e|viele gr(?:ü|ue)(?:ß|ss)e|saludos|un saludo)"
    r"(?:\s*[,.!]+\s*(?:[A-Z][\w.'-]*(?:\s+[A-Z][\w.'-]*){0,2})?)?\s*"
    r"(?:\n[^\n.!?]{0,40}){0,2}\s*$")
# Someone who asks for discretion is never quoted, whatever the request told them.
_PRIVATE = re.compile(
    r"\b(do(n'?t| not) (share|pass|forward|quote|tell)|confidential|off the record|"
    r"between (you and me|us)|keep (this|it) (private|to yourself)|not for sharing|"
    r"private(ly)?:|vertraulich|unter uns|confidentiel|entre nous|confidencial|entre nosotros)",
    re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")


def may_quote(text: str) -> bool:
    """False when the writer asked us not to pass their words on."""
    return not _PRIVATE.search(text or "")


def one_line(text: str, limit: int = 160) -> str:
    """A reply flattened to one short line: no greeting or sign-off, whole sentences when they
    fit in `limit` characters, else cut at a word with an ellipsis. Control and bidi-override
    characters are dropped (they could reorder what the reader sees)."""
    text = unicodedata.normalize("NFC", text or "").replace("\r", "")
    text = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch)[0] != "C")
    text = _SALUTATION.sub("", text.strip() + "\n", count=1)
    text = _SIGNOFF.sub("", text.rstrip())
    flat = " ".join(text.split()).strip(" \"'“”‘’")
    if len(flat) <= limit:
        return flat
    kept = ""
    for sentence in _SENTENCE_END.split(flat):
        candidate = f"{kept} {sentence}".strip()
        if len(candidate) > limit:
            break
        kept = candidate
    if len(kept) >= limit // 3:
        return kept
    cut = flat[: limit - 1]
    if " " in cut[limit // 2:]:
        cut = cut[: cut.rfind(" ")]
    return cut.rstrip(" ,;:-–—") + "…"


@dataclass(frozen=True, slots=True)
class Quote:
    """A party's words, one line, with who said it and about which introduction."""

    who: str
    text: str
    referral_id: int
    about: str = ""  # the other people of that introduction


# ---------------------------------------------------------------------------------- lessons


@dataclass(frozen=True, slots=True)
class Lesson:
    """One no-blame lesson drawn from what the parties of failed referrals said."""

    title: str
    text: str
    quotes: tuple[Quote, ...] = ()


# (theme, words that point to it, title, advice). Specific themes first: the first match wins
# a tie. The advice talks about the next introduction, never about what anyone did wrong.
_THEMES: tuple[tuple[str, re.Pattern[str], str, str], ...] = tuple(
    (key, re.compile(pattern, re.IGNORECASE), title, text)
    for key, pattern, title, text in (
        ("covered",
         r"already (have|has|use|work|working|got|found|signed)|existing (provider|vendor|"
         r"partner|supplier|agency)|in[- ]house",
         "They were already covered",
         "One side already had someone for this. A one-line check before the next intro "
         "(\"do you already work with someone for this?\") saves both sides a call."),
        ("budget",
         r"budget|pric(e|ing)|cost|expensive|afford|money|funding|cash|fees?\b|rates?\b",
         "Budget got in the way",
         "Money was the obstacle, not the people. Asking whether there is budget now or next "
         "quarter helps the next introduction land at the right moment."),
        ("timing",
         r"timing|not (right )?now|next (year|quarter|month)|later|too (early|soon|late)|"
         r"busy|freeze|on hold|postpone",
         "The timing was off",
         "The match may be right and the moment wrong. A friendly check-in with both of them "
         "in a few months could turn this one around."),
        ("contact",
         r"never (heard|replied|responded|got back|met)|no (reply|response|answer)|"
         r"did(n'?t| not) (hear|reply|respond|get back)|ghost|could(n'?t| not) reach|"
         r"unresponsive",
         "They never quite connected",
         "Sometimes an introduction stalls before the first call. A short nudge to both a week "
         "later often gets things moving."),
        ("location",
         r"location|based in|remote|on-?site|time ?zone|too far|different (country|city)",
         "Location mattered",
         "Where they are turned out to matter. A word about location in the intro lets both "
         "sides judge the fit at a glance."),
        ("fit",
         r"fit|size|too (small|big|large)|stage|enterprise|scope|industry|sector|niche|"
         r"different (needs|focus)|looking for",
         "The fit was not quite there",
         "Size, stage or scope did not line up. Asking each of them who their ideal contact "
         "is makes the next match sharper."),
        ("context",
         r"why|context|not sure what|did(n'?t| not) (understand|know)|expect|misunderst",
         "The reason for the intro was unclear",
         "One side was not sure why they were introduced. A sentence on what each could gain "
         "from the other makes the first conversation easier."),
    )
)
_GENERAL = Lesson(
    "Every introduction teaches something",
    "Not every referral lands, and that is normal. A two-minute call with each side about what "
    "would have made it a better match is one of the most useful questions in networking.",
)


def lessons_from(answers: list[tuple[Quote, str]], limit: int = 2) -> tuple[Lesson, ...]:
    """Up to `limit` lessons from "did not work" answers: (shareable quote, full text) pairs.

    Themes are found in the full text (even when it may not be quoted); the lesson quotes only
    what may be shared. No answers: no lessons. Answers that match no theme: one general lesson.
    """
    if not answers:
        return ()
    hits: Counter[str] = Counter()
    quotes: dict[str, list[Quote]] = {}
    for quote, text in answers:
        for key, pattern, _title, _text in _THEMES:
            if pattern.search(text):
                hits[key] += 1
                if quote.text:
                    quotes.setdefault(key, []).append(quote)
                break
    order = [k for k, _p, _t, _x in _THEMES]
    ranked = sorted(hits, key=lambda k: (-hits[k], order.index(k)))[:limit]
    out = [Lesson(t, x, tuple(quotes.get(k, [])[:2]))
           for k in ranked for key, _p, t, x in _THEMES if key == k]
    if not out:
        out.append(replace(_GENERAL, quotes=tuple(q for q, _ in answers if q.text)[:2]))
    return tuple(out)


# ---------------------------------------------------------------------------------- pieces


@dataclass(frozen=True, slots=True)
class Rate:
    """A success (or answer) rate: `good` out of `total`."""

    good: int
    total: int

    @property
    def value(self) -> float | None:
        """0..1, or None when there is nothing to divide."""
        return self.good / self.total if self.total else None

    @property
    def percent(self) -> int | None:
        """Rounded percentage, or None."""
        return None if not self.total else round(100 * self.good / self.total)


def success(refs: list[ReferralRecord]) -> Rate:
    """Worked (or going well) out of worked + did not; mixed answers are left out."""
    good = sum(1 for r in refs if r.outcome in (WORKED, WORKING))
    bad = sum(1 for r in refs if r.outcome == DID_NOT)
    return Rate(good, good + bad)


def trend(this: Rate, before: Rate) -> str | None:
    """up / down / steady against the months before; None when there is too little to say."""
    # one or two answers swing a percentage wildly: no trend from so few
    if this.total < 2 or before.total < 3 or this.value is None or before.value is None:
        return None
    if this.value >= before.value + 0.10:
        return "up"
    if this.value <= before.value - 0.10:
        return "down"
    return "steady"


@dataclass(frozen=True, slots=True)
class ChartBar:
    """One month of the 12-month chart (referrals introduced that month, as of the month end)."""

    label: str  # "Nov"
    long_label: str  # "Nov 2026"
    worked: int
    did_not: int
    pending: int
    mixed: int = 0
    current: bool = False

    @property
    def total(self) -> int:
        """All referrals of the month that the bar shows."""
        return self.worked + self.did_not + self.pending + self.mixed

    @property
    def words(self) -> str:
        """`3 worked, 1 did not, 2 waiting` (empty parts left out; `none` for an empty month)."""
        parts = [f"{n} {w}" for n, w in ((self.worked, "worked"), (self.did_not, "did not"),
                                         (self.mixed, "mixed"), (self.pending, "waiting")) if n]
        return ", ".join(parts) or "none"


@dataclass(frozen=True, slots=True)
class Chart:
    """The last 12 months, oldest first, with what the templates need to draw them."""

    bars: tuple[ChartBar, ...]
    height: int = 80  # pixels of the tallest bar in the HTML chart

    @property
    def peak(self) -> int:
        """The tallest bar's total (at least 1)."""
        return max([1, *(b.total for b in self.bars)])

    @property
    def has_mixed(self) -> bool:
        """True when some month has referrals whose two sides disagree (legend entry)."""
        return any(b.mixed for b in self.bars)

    @property
    def empty(self) -> bool:
        """True when there is nothing to draw."""
        return all(b.total == 0 for b in self.bars)

    def px(self, n: int) -> int:
        """Pixel height of a segment of `n` referrals (0 for none; at least 3 px to be seen)."""
        if n <= 0:
            return 0
        return max(3, round(n * self.height / self.peak))

    def gap(self, bar: ChartBar) -> int:
        """Pixel height of the empty space above a bar."""
        used = sum(self.px(n) for n in (bar.worked, bar.did_not, bar.mixed, bar.pending))
        return max(0, self.height - used) + 14  # room for the count printed above the bar

    def text_lines(self, width: int = 24) -> list[str]:
        """The chart for the plain-text part: one line per month, marks then words."""
        scale = max(1, math.ceil(self.peak / width))
        marks = ["".join(ch * math.ceil(n / scale) for ch, n in (
            ("#", b.worked), ("x", b.did_not), ("~", b.mixed), (".", b.pending)))
            for b in self.bars]
        pad = max(len(m) for m in marks) if marks else 0
        return [f"{b.long_label:<8}  {m:<{pad}}  {b.words if b.total else '-'}"
                for b, m in zip(self.bars, marks, strict=True)]

    @property
    def legend(self) -> str:
        """The plain-text legend (and scale, when one mark stands for several referrals)."""
        parts = ["# worked", "x did not work"] + (["~ sides disagree"] if self.has_mixed
                                                   else []) + [". waiting"]
        scale = max(1, math.ceil(self.peak / 24))
        extra = f"; each mark is {scale} introductions" if scale > 1 else ""
        return "(" + ", ".join(parts) + extra + ")"


def chart_for(refs: list[ReferralRecord], month: Month, tz: ZoneInfo) -> Chart:
    """The 12 months ending with `month`: referrals introduced each month, by outcome."""
    months = [month.back(n) for n in range(11, -1, -1)]
    by_month: dict[Month, list[ReferralRecord]] = {m: [] for m in months}
    for r in refs:
        m = Month.of(r.introduced_at, tz)
        if m in by_month:
            by_month[m].append(r)
    bars = []
    for m in months:
        outcomes = Counter(r.outcome for r in by_month[m])
        bars.append(ChartBar(
            label=m.short, long_label=f"{m.short} {m.year}",
            worked=outcomes[WORKED] + outcomes[WORKING], did_not=outcomes[DID_NOT],
            pending=outcomes[OPEN], mixed=outcomes[MIXED], current=m == month,
        ))
    return Chart(tuple(bars))


def _day(moment: datetime, tz: ZoneInfo) -> str:
    local = moment.astimezone(tz)
    return f"{local.day} {_MONTHS[local.month - 1][:3]}"


# ---------------------------------------------------------------------------------- member


@dataclass(frozen=True, slots=True)
class AnswerLine:
    """One party's answer in a referral line."""

    name: str
    state: str  # worked | did_not | pending | reviewing | no_answer | no_response
    label: str
    quote: str = ""


@dataclass(frozen=True, slots=True)
class ReferralLine:
    """One referral in the summary, with each party's answer."""

    id: int
    introduced_on: str
    names: str
    outcome: str
    answers: tuple[AnswerLine, ...]
    carried_over: bool = False

    @property
    def outcome_label(self) -> str:
        """What the answers add up to, in words."""
        return OUTCOME_LABEL.get(self.outcome, self.outcome)


@dataclass(frozen=True, slots=True)
class ReceivedLine:
    """An introduction another member made for this member."""

    id: int
    introduced_on: str
    referrer: Person
    others: str  # who they were introduced to
    answer: AnswerLine  # the member's own answer so far
    thank_link: str  # mailto: a ready thank-you note to the referrer


@dataclass(frozen=True, slots=True)
class MemberSummary:
    """Everything a member's monthly summary shows."""

    member: Person
    month: Month
    timezone: str
    passed: tuple[ReferralLine, ...]
    still_open: tuple[ReferralLine, ...]
    still_open_more: int
    received: tuple[ReceivedLine, ...]
    counts: dict[str, int]
    rate: Rate
    rate_12m: Rate
    trend: str | None
    thanks: tuple[Quote, ...]
    thanks_received: int
    lessons: tuple[Lesson, ...]
    chart: Chart = field(default_factory=lambda: Chart(()))

    @property
    def has_activity(self) -> bool:
        """False when nothing happened this month (such members get no summary by default).

        Referrals still open from earlier do not count on their own: a member would otherwise
        get the same unchanged list every month.
        """
        return bool(self.passed or self.received or self.counts.get("answers"))

    @property
    def success_rate(self) -> float | None:
        """This month's success rate, 0..1 (None: nothing decided this month)."""
        return self.rate.value

    @property
    def success_rate_12m(self) -> float | None:
        """The last 12 months' success rate, 0..1."""
        return self.rate_12m.value


STILL_OPEN_SHOWN = 8
QUOTE_LIMIT = 160


def _quote(p: PartyRecord) -> str:
    if not p.shareable or not p.quote or p.outcome not in (Outcome.POSITIVE, Outcome.NEGATIVE):
        return ""
    if not may_quote(p.quote):
        return ""
    return one_line(p.quote, QUOTE_LIMIT)


def _line(r: ReferralRecord, tz: ZoneInfo, carried: bool = False) -> ReferralLine:
    answers = tuple(
        AnswerLine(p.person.display, state := answer_state(p), ANSWER_LABEL[state], _quote(p))
        for p in r.parties
    )
    return ReferralLine(
        id=r.id,
        introduced_on=_day(r.introduced_at, tz),
        names=names_of([p.person for p in r.parties]),
        outcome=r.outcome,
        answers=answers,
        carried_over=carried,
    )


def _is_waiting(p: PartyRecord) -> bool:
    return answer_state(p) in ("no_answer", "pending", "reviewing")


def member_summary(
    member: Person,
    month: Month,
    referrals: list[ReferralRecord],
    received: list[ReferralRecord],
    tz: ZoneInfo,
    *,
    aliases: tuple[str, ...] = (),
) -> MemberSummary:
    """The member's month.

    `referrals`: what the member passed (this month and the 12 months before, for the chart,
    the rates and the still-open list); `received`: referrals by others in which the member
    (or one of their `aliases`) is a party. Both as stored now: this function looks at them as
    they stood at the end of the month.
    """
    start, end = month.start(tz), month.end(tz)
    mine = [r.as_of(end) for r in referrals
            if r.status != "cancelled" and r.introduced_at < end]
    this_month = [r for r in mine if r.introduced_at >= start]
    earlier_open = [
        r for r in mine
        if r.introduced_at < start and r.outcome in (OPEN, WORKING)
        and any(_is_waiting(p) for p in r.parties)
    ]
    earlier_open.sort(key=lambda r: r.introduced_at, reverse=True)

    counts = Counter(r.outcome for r in this_month)
    thanks: list[Quote] = []
    negatives: list[tuple[Quote, str]] = []
    answers = 0
    for r in mine:
        for p in r.parties:
            if not month.contains(p.outcome_at, tz) or p.outcome in (None, Outcome.OPTOUT):
                continue
            answers += 1
            about = names_of([o.person for o in r.parties if o is not p])
            quote = Quote(p.person.display, _quote(p), r.id, about)
            if p.outcome is Outcome.POSITIVE:
                thanks.append(quote)
            elif p.outcome is Outcome.NEGATIVE and r.outcome in (DID_NOT, MIXED):
                # words a party asked us to keep private do not even feed a lesson's theme
                private = not p.shareable or not may_quote(p.quote)
                negatives.append((quote, "" if private else p.quote))

    decided_now = [r for r in mine if month.contains(r.decided_at, tz)]
    year_start = month.back(11).start(tz)
    decided_12m = [r for r in mine if r.decided_at is not None
                   and year_start <= r.decided_at < end]
    decided_before = [r for r in mine if r.decided_at is not None
                      and month.back(12).start(tz) <= r.decided_at < start]
    rate, rate_12m = success(decided_now), success(decided_12m)

    own = {member.email, *aliases}
    received_lines = []
    for r in sorted(received, key=lambda r: r.introduced_at):
        if r.status == "cancelled" or r.referrer.email in own or not month.contains(
                r.introduced_at, tz):
            continue
        then = r.as_of(end)
        me = next((p for p in then.parties if p.person.email in own), None)
        if me is None:
            continue
        others = names_of([p.person for p in then.parties if p is not me])
        state = answer_state(me)
        received_lines.append(ReceivedLine(
            id=then.id,
            introduced_on=_day(then.introduced_at, tz),
            referrer=then.referrer,
            others=others,
            answer=AnswerLine(me.person.display, state, ANSWER_LABEL[state]),
            thank_link=mailto(
                then.referrer.email,
                f"Thank you for introducing me to {others}",
                f"Hi {then.referrer.first_name},\n\nThank you for introducing me to {others}.",
            ),
        ))

    return MemberSummary(
        member=member,
        month=month,
        timezone=str(tz.key),
        passed=tuple(_line(r, tz) for r in this_month),
        still_open=tuple(_line(r, tz, carried=True) for r in earlier_open[:STILL_OPEN_SHOWN]),
        still_open_more=max(0, len(earlier_open) - STILL_OPEN_SHOWN),
        received=tuple(received_lines),
        counts={
            "passed": len(this_month),
            "worked": counts[WORKED] + counts[WORKING],
            "did_not_work": counts[DID_NOT],
            "mixed": counts[MIXED],
            "waiting": counts[OPEN],
            "answers": answers,
            "received": len(received_lines),
        },
        rate=rate,
        rate_12m=rate_12m,
        trend=trend(rate, success(decided_before)),
        thanks=tuple(q for q in thanks if q.text)[:5],
        thanks_received=len(thanks),
        lessons=lessons_from(negatives),
        chart=chart_for(mine, month, tz),
    )


# ---------------------------------------------------------------------------------- network


@dataclass(frozen=True, slots=True)
class Ranked:
    """A person in a top list."""

    name: str
    email: str
    count: int
    worked: int = 0


@dataclass(frozen=True, slots=True)
class UnansweredLine:
    """A party asked this month who had not answered by the month's end."""

    party: str
    referrer: str
    asked_on: str
    referral_id: int
    gave_up: bool  # reminders are used up: counted as "no response"


@dataclass(frozen=True, slots=True)
class NetworkSummary:
    """The operator's view of the network's month."""

    month: Month
    timezone: str
    counts: dict[str, int]
    answer_rate: Rate
    rate: Rate
    rate_12m: Rate
    trend: str | None
    top_referrers: tuple[Ranked, ...]
    top_receivers: tuple[Ranked, ...]
    unanswered: tuple[UnansweredLine, ...]
    unanswered_total: int
    waiting_now: int
    unclear: tuple[tuple[UnclearRecord, str, str], ...]  # (record, received on, one-line text)
    unclear_total: int
    suppressed: tuple[tuple[SuppressionRecord, str], ...]  # (record, on)
    delivery: tuple[tuple[DeliveryRecord, str, str], ...]  # (record, on, one-line error)
    delivery_total: int
    chart: Chart

    @property
    def needs_attention(self) -> int:
        """Unclear replies waiting plus delivery problems: what the operator should act on."""
        return self.unclear_total + self.delivery_total

    @property
    def has_activity(self) -> bool:
        """False when nothing at all happened and nothing waits for the operator."""
        return bool(self.counts["referrals"] or self.counts["answers"] or self.unclear_total
                    or self.suppressed or self.delivery_total or self.unanswered_total)


LIST_SHOWN = 10


def network_summary(
    month: Month,
    referrals: list[ReferralRecord],
    tz: ZoneInfo,
    *,
    unclear: Sequence[UnclearRecord] = (),
    suppressions: Sequence[SuppressionRecord] = (),
    delivery: Sequence[DeliveryRecord] = (),
) -> NetworkSummary:
    """The network's month. `referrals`: all referrals of this month and the 12 before;
    `unclear`: replies waiting for a person now; `suppressions` and `delivery`: any, filtered
    here to the month."""
    start, end = month.start(tz), month.end(tz)
    refs = [r.as_of(end) for r in referrals
            if r.status != "cancelled" and r.introduced_at < end]
    this_month = [r for r in refs if r.introduced_at >= start]
    outcomes = Counter(r.outcome for r in this_month)

    asked = [(r, p) for r in refs for p in r.parties if month.contains(p.asked_at, tz)]
    answered = [(r, p) for r, p in asked if p.outcome is not None]
    unanswered = sorted(((r, p) for r, p in asked if p.outcome is None),
                        key=lambda rp: rp[1].asked_at or start)
    answers = sum(1 for r in refs for p in r.parties
                  if month.contains(p.outcome_at, tz) and p.outcome is not None)

    referrers: dict[str, Ranked] = {}
    for r in this_month:
        old = referrers.get(r.referrer.email, Ranked(r.referrer.display, r.referrer.email, 0))
        referrers[r.referrer.email] = replace(
            old, count=old.count + 1, worked=old.worked + (r.outcome in (WORKED, WORKING)))
    receivers: dict[str, Ranked] = {}
    for r in this_month:
        for p in r.parties:
            old = receivers.get(p.person.email, Ranked(p.person.display, p.person.email, 0))
            receivers[p.person.email] = replace(
                old, count=old.count + 1,
                worked=old.worked + (p.outcome is Outcome.POSITIVE))

    def top(d: dict[str, Ranked], least: int = 1) -> tuple[Ranked, ...]:
        ranked = sorted(d.values(), key=lambda x: (-x.count, x.name.lower()))
        return tuple(x for x in ranked if x.count >= least)[:5]

    decided_now = [r for r in refs if month.contains(r.decided_at, tz)]
    decided_12m = [r for r in refs if r.decided_at is not None
                   and month.back(11).start(tz) <= r.decided_at < end]
    decided_before = [r for r in refs if r.decided_at is not None
                      and month.back(12).start(tz) <= r.decided_at < start]
    rate = success(decided_now)

    unclear_sorted = sorted(unclear, key=lambda u: (u.received_at or end, u.id))
    supp = sorted((x for x in suppressions if month.contains(x.at, tz)),
                  key=lambda x: (x.at or end, x.email))
    # failures of this month, and anything still being retried (a problem until it goes out)
    problems = sorted((d for d in delivery if d.at is None or (
        d.at < end and (d.status != "failed" or d.at >= start))),
        key=lambda d: (d.at or end, d.id), reverse=True)

    return NetworkSummary(
        month=month,
        timezone=str(tz.key),
        counts={
            "referrals": len(this_month),
            "referrers": len(referrers),
            "parties": sum(len(r.parties) for r in this_month),
            "asked": len(asked),
            "answered": len(answered),
            "answers": answers,
            "worked": outcomes[WORKED] + outcomes[WORKING],
            "did_not_work": outcomes[DID_NOT],
            "mixed": outcomes[MIXED],
            "waiting": outcomes[OPEN],
            "bounced": sum(1 for x in supp if x.reason == "bounce"),
            "opted_out": sum(1 for x in supp if x.reason in ("optout", "complaint")),
        },
        answer_rate=Rate(len(answered), len(asked)),
        rate=rate,
        rate_12m=success(decided_12m),
        trend=trend(rate, success(decided_before)),
        top_referrers=top(referrers),
        # introduced once is the norm; a top list of ones would say nothing
        top_receivers=top(receivers, least=2),
        unanswered=tuple(
            UnansweredLine(p.person.display, r.referrer.display,
                           _day(p.asked_at, tz) if p.asked_at else "?", r.id,
                           p.status == "noresponse")
            for r, p in unanswered[:LIST_SHOWN]),
        unanswered_total=len(unanswered),
        waiting_now=sum(1 for r in referrals if r.status != "cancelled" for p in r.parties
                        if p.status == "requested" and p.outcome is None),
        unclear=tuple((u, _day(u.received_at, tz) if u.received_at else "?",
                       one_line(u.text, 100)) for u in unclear_sorted[:LIST_SHOWN]),
        unclear_total=len(unclear_sorted),
        suppressed=tuple((x, _day(x.at, tz) if x.at else "?") for x in supp[:3 * LIST_SHOWN]),
        delivery=tuple((d, _day(d.at, tz) if d.at else "?", one_line(d.error, 120))
                       for d in problems[:LIST_SHOWN]),
        delivery_total=len(problems),
        chart=chart_for(refs, month, tz),
    )


# ---------------------------------------------------------------------------------- JSON


def _rate_json(r: Rate) -> dict[str, Any]:
    return {"good": r.good, "total": r.total, "value": r.value}


def _chart_json(c: Chart) -> list[dict[str, Any]]:
    return [{"month": b.long_label, "worked": b.worked, "did_not": b.did_not,
             "mixed": b.mixed, "pending": b.pending} for b in c.bars]


def _line_json(r: ReferralLine) -> dict[str, Any]:
    return {"id": r.id, "introduced_on": r.introduced_on, "names": r.names,
            "outcome": r.outcome,
            "answers": [{"name": a.name, "answer": a.state, "quote": a.quote}
                        for a in r.answers]}


def member_summary_json(s: MemberSummary) -> dict[str, Any]:
    """A member's summary as JSON-friendly data (`introloop summary --json`)."""
    return {
        "member": s.member.email,
        "month": str(s.month),
        "timezone": s.timezone,
        "has_activity": s.has_activity,
        "counts": s.counts,
        "success_rate": s.rate.value,
        "success": _rate_json(s.rate),
        "success_rate_12m": s.rate_12m.value,
        "success_12m": _rate_json(s.rate_12m),
        "trend": s.trend,
        "thanks_received": s.thanks_received,
        "passed": [_line_json(r) for r in s.passed],
        "still_open": [_line_json(r) for r in s.still_open],
        "still_open_more": s.still_open_more,
        "received": [{"id": r.id, "introduced_on": r.introduced_on,
                      "referrer": r.referrer.email, "others": r.others,
                      "your_answer": r.answer.state} for r in s.received],
        "quotes": [{"who": q.who, "text": q.text, "referral": q.referral_id} for q in s.thanks],
        "lessons": [{"title": x.title, "text": x.text,
                     "quotes": [{"who": q.who, "text": q.text} for q in x.quotes]}
                    for x in s.lessons],
        "chart": _chart_json(s.chart),
    }


def network_summary_json(s: NetworkSummary) -> dict[str, Any]:
    """The network's summary as JSON-friendly data (`introloop summary --network --json`)."""
    return {
        "month": str(s.month),
        "timezone": s.timezone,
        "has_activity": s.has_activity,
        "counts": s.counts,
        "answer_rate": _rate_json(s.answer_rate),
        "success": _rate_json(s.rate),
        "success_12m": _rate_json(s.rate_12m),
        "trend": s.trend,
        "top_referrers": [{"name": x.name, "email": x.email, "referrals": x.count,
                           "worked": x.worked} for x in s.top_referrers],
        "top_receivers": [{"name": x.name, "email": x.email, "introductions": x.count}
                          for x in s.top_receivers],
        "unanswered": [{"party": u.party, "referrer": u.referrer, "asked_on": u.asked_on,
                        "referral": u.referral_id, "gave_up": u.gave_up} for u in s.unanswered],
        "unanswered_total": s.unanswered_total,
        "waiting_now": s.waiting_now,
        "unclear": [{"id": u.id, "from": u.from_email, "received_on": on, "text": text}
                    for u, on, text in s.unclear],
        "unclear_total": s.unclear_total,
        "suppressed": [{"email": x.email, "reason": x.reason, "on": on}
                       for x, on in s.suppressed],
        "delivery": [{"id": d.id, "kind": d.kind, "to": d.to_email, "status": d.status,
                      "attempts": d.attempts, "error": err, "on": on}
                     for d, on, err in s.delivery],
        "delivery_total": s.delivery_total,
        "chart": _chart_json(s.chart),
    }
