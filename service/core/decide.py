"""What to send next, and when. Pure: the clock is an argument, state comes in as values.

A party moves through these states:

    scheduled --(feedback delay)--> requested --(reminder delay)--> reminded ... --> noresponse
        requested/reminded --reply--> answered (positive/negative) | pending | unclear | optedout
        pending --(recheck delay)--> requested again
    and at any time: bounced (hard bounce), optedout (stop), cancelled (referrer cancelled).

Every message the service sends is a `Send` with a unique outbox key; the outbox refuses a
second row with the same key, which is what makes "never twice" hold across restarts.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from service.core.model import Classification, Outcome, Person
from service.core.when import named_date


class PartyStatus(enum.StrEnum):
    """Where a party is in the feedback loop."""

    SCHEDULED = "scheduled"
    REQUESTED = "requested"
    PENDING = "pending"
    UNCLEAR = "unclear"
    ANSWERED = "answered"
    NORESPONSE = "noresponse"
    OPTEDOUT = "optedout"
    BOUNCED = "bounced"
    CANCELLED = "cancelled"


# States in which the party may still get mail from us on a schedule.
ACTIVE = frozenset({PartyStatus.SCHEDULED, PartyStatus.REQUESTED, PartyStatus.PENDING})


@dataclass(frozen=True, slots=True)
class Policy:
    """The timing rules, from settings."""

    feedback_delay: timedelta
    reminder_delay: timedelta
    max_reminders: int
    pending_recheck: timedelta
    timezone: ZoneInfo
    quiet_hours: tuple[time, time] | None = None
    quiet_weekends: bool = False  # no party mail on Saturdays and Sundays (network timezone)
    party_weekly_cap: int = 3  # messages to one introduced person per 7 days; 0 = no cap


@dataclass(frozen=True, slots=True)
class PartyState:
    """What the core needs to know about one party of a referral."""

    party_id: int
    referral_id: int
    person: Person
    referrer: Person
    others: tuple[Person, ...]
    status: PartyStatus
    requests_sent: int = 0
    reminders_sent: int = 0
    rounds: int = 0
    suppressed: bool = False
    answered: bool = False  # the party has answered something (even "not yet") in this referral


@dataclass(frozen=True, slots=True)
class Send:
    """One message to queue. `kind` names the template; `key` is unique per logical message."""

    kind: str
    key: str
    to: Person
    party_id: int | None = None
    referral_id: int | None = None
    facts: dict[str, object] = field(default_factory=dict)
    reply_to_party: bool = False  # Reply-To carries the party's token
    thread_with_request: bool = False  # In-Reply-To the last request we sent this party
    audience: str = "party"  # party | member | operator (quiet hours apply to parties only)


@dataclass(frozen=True, slots=True)
class Step:
    """The outcome of a decision: the party's new state plus the messages to queue."""

    status: PartyStatus
    next_due_at: datetime | None
    sends: tuple[Send, ...] = ()
    requests_sent: int | None = None
    reminders_sent: int | None = None
    rounds: int | None = None
    outcome: Outcome | None = None
    note: str = ""


def first_due(introduced_at: datetime, policy: Policy) -> datetime:
    """When the first feedback request falls due."""
    return introduced_at + policy.feedback_delay


def in_quiet_hours(now: datetime, policy: Policy) -> bool:
    """True when `now` falls in the network's quiet hours (start inclusive, end exclusive),
    or on a weekend when `policy.quiet_weekends` is set."""
    if policy.quiet_weekends and now.astimezone(policy.timezone).weekday() >= 5:
        return True
    if not policy.quiet_hours:
        return False
    start, end = policy.quiet_hours
    local = now.astimezone(policy.timezone).time().replace(tzinfo=None)
    if start == end:
        return False
    if start < end:
        return start <= local < end
    return local >= start or local < end  # the range crosses midnight, e.g. 20:00-08:00


def next_sendable(now: datetime, policy: Policy) -> datetime:
    """`now`, or the end of the quiet time it falls in (as an aware UTC datetime).

    Quiet weekends end at Monday 00:00 local time, or at the end of Monday's quiet hours when
    those cover midnight, so Friday 21:00 with `20:00-08:00` and quiet weekends gives Monday
    08:00.
    """
    moment = now
    for _ in range(8):  # each step leaves one quiet stretch; a week has at most a few
        if not in_quiet_hours(moment, policy):
            return moment
        local = moment.astimezone(policy.timezone)
        if policy.quiet_weekends and local.weekday() >= 5:
            monday = (local + timedelta(days=7 - local.weekday())).replace(
                hour=0, minute=0, second=0, microsecond=0)
            moment = monday.astimezone(UTC)
            continue
        assert policy.quiet_hours is not None
        end = policy.quiet_hours[1]
        candidate = local.replace(hour=end.hour, minute=end.minute, second=0, microsecond=0)
        if candidate <= local:
            candidate += timedelta(days=1)
        # wall-clock arithmetic in the zone, then back to UTC; a DST gap at `end` moves it
        # forward
        moment = candidate.astimezone(UTC)
    return moment


CAP_WINDOW = timedelta(days=7)  # "per week" is a rolling 168 hours, the same across DST


def cap_slot(at: datetime, history: list[datetime], cap: int,
             window: timedelta = CAP_WINDOW) -> datetime:
    """The earliest moment at or after `at` when one more message keeps the cap.

    `history` holds the moments of the other messages to the same person (sent, or queued for
    later). A new message at `t` is allowed when every `window`-long stretch containing `t`
    then holds at most `cap` messages, counting queued ones too: a request queued for next
    Tuesday counts against this Friday's window. `cap` 0 means no cap.
    """
    if cap <= 0:
        return at
    times = sorted(history)
    # the count in a window only drops when a message leaves it: try `at`, then those moments
    candidates = [at, *sorted(t + window for t in times if t + window > at)]
    for t in candidates:
        if _fits(t, times, cap, window):
            return t
    return candidates[-1]  # unreachable: after the last message leaves, the window is empty


def _fits(t: datetime, times: list[datetime], cap: int, window: timedelta) -> bool:
    points = sorted([*times, t])
    # the busiest window containing t can be slid right until it starts at a message (or at
    # t itself) without losing any: checking those windows is enough
    return all(
        sum(1 for x in points if start <= x < start + window) <= cap
        for start in points
        if start <= t < start + window
    )


def party_slot(now: datetime, policy: Policy, history: list[datetime]) -> datetime:
    """When a message to an introduced person may go: outside quiet time and within the cap."""
    moment = now
    for _ in range(50):  # both rules only move forward; they agree within a few rounds
        quiet = next_sendable(moment, policy)
        capped = cap_slot(quiet, history, policy.party_weekly_cap)
        if capped == quiet:
            return quiet
        moment = capped
    return moment


RETRY_BASE = timedelta(minutes=1)
RETRY_CAP = timedelta(hours=6)
MAX_SEND_ATTEMPTS = 15  # about a day and a half of retries, then `failed` for the operator


def retry_delay(attempts: int, rand: float) -> timedelta | None:
    """How long to wait after the `attempts`-th temporary failure; None means give up.

    Exponential backoff (1, 2, 4 ... minutes, at most 6 hours) with "equal jitter": half the
    delay is fixed, half is random (`rand` in [0, 1), passed in to keep this pure), so workers
    that failed together do not retry together, and a retry is never immediate.
    """
    if attempts >= MAX_SEND_ATTEMPTS:
        return None
    full = min(RETRY_BASE * 2 ** min(max(attempts - 1, 0), 20), RETRY_CAP)
    return full / 2 + full / 2 * min(max(rand, 0.0), 1.0)


def due_step(state: PartyState, now: datetime, policy: Policy) -> Step:
    """The party's next scheduled step falls due at `now`: request, reminder, or give up."""
    if state.suppressed:
        return Step(PartyStatus.OPTEDOUT, None, note="address suppressed: nothing sent")
    if state.status in (PartyStatus.SCHEDULED, PartyStatus.PENDING):
        rounds = state.rounds + 1
        kind = "feedback_request" if state.status is PartyStatus.SCHEDULED else "recheck"
        send = Send(
            kind=kind,
            key=f"request:{state.party_id}:{rounds}",
            to=state.person,
            party_id=state.party_id,
            referral_id=state.referral_id,
            reply_to_party=True,
            facts={"round": rounds},
        )
        return Step(
            PartyStatus.REQUESTED,
            now + policy.reminder_delay,
            (send,),
            requests_sent=state.requests_sent + 1,
            reminders_sent=0,
            rounds=rounds,
            note=f"{kind} #{rounds}",
        )
    if state.status is PartyStatus.REQUESTED:
        if state.answered:
            # they answered before ("not yet"), so we asked again; never nag after an answer
            return Step(PartyStatus.NORESPONSE, None,
                        note="no answer to the recheck; no reminder after an earlier answer")
        if state.reminders_sent < policy.max_reminders:
            n = state.reminders_sent + 1
            send = Send(
                kind="reminder",
                key=f"reminder:{state.party_id}:{state.rounds}:{n}",
                to=state.person,
                party_id=state.party_id,
                referral_id=state.referral_id,
                reply_to_party=True,
                thread_with_request=True,
                facts={"reminder": n, "last": n >= policy.max_reminders},
            )
            return Step(
                PartyStatus.REQUESTED,
                now + policy.reminder_delay,
                (send,),
                requests_sent=state.requests_sent + 1,
                reminders_sent=n,
                note=f"reminder {n} of {policy.max_reminders}",
            )
        return Step(PartyStatus.NORESPONSE, None, note="no answer after the last reminder")
    return Step(state.status, None, note=f"nothing due in state {state.status}")


def reply_step(
    state: PartyState,
    verdict: Classification,
    now: datetime,
    policy: Policy,
    *,
    reply_key: str,
    operator: Person | None,
    text: str = "",
) -> Step:
    """A reply from the party was read as `verdict`: new state and the messages it triggers.

    `text` is the answer; for "not yet" a date it names ("by mid-April", "on the 12th")
    times the recheck just after it (see `recheck_time`).

    `reply_key` identifies the inbound reply (for unique outbox keys); the operator gets the
    unclear ones. Appreciation goes to the referrer only for a definite answer.
    """
    pid, rid = state.party_id, state.referral_id
    facts: dict[str, object] = {"outcome": verdict.outcome.value}
    if verdict.outcome is Outcome.OPTOUT:
        return Step(
            PartyStatus.OPTEDOUT,
            None,
            (
                Send(
                    "optout_confirmation",
                    f"optout:{state.person.email}",
                    state.person,
                    pid,
                    rid,
                    thread_with_request=True,
                    audience="party",
                ),
            ),
            outcome=Outcome.OPTOUT,
            note="opted out: no more mail to this address, ever",
        )
    if state.suppressed:
        return Step(state.status, None, outcome=verdict.outcome, note="address suppressed")
    if verdict.outcome is Outcome.POSITIVE:
        return Step(
            PartyStatus.ANSWERED,
            None,
            (
                Send("thanks_positive", f"thanks:{pid}:positive", state.person, pid, rid,
                     facts, thread_with_request=True),
                Send("appreciation", f"appreciation:{pid}", state.referrer, pid, rid, facts,
                     audience="member"),
            ),
            outcome=Outcome.POSITIVE,
            note="positive: thanks to the party, appreciation to the referrer",
        )
    if verdict.outcome is Outcome.NEGATIVE:
        return Step(
            PartyStatus.ANSWERED,
            None,
            (
                Send("thanks_negative", f"thanks:{pid}:negative", state.person, pid, rid,
                     facts, thread_with_request=True),
                Send("lessons", f"lessons:{pid}", state.referrer, pid, rid, facts,
                     audience="member"),
            ),
            outcome=Outcome.NEGATIVE,
            note="negative: thanks for the honesty, lessons note to the referrer",
        )
    if verdict.outcome is Outcome.PENDING:
        named = named_date(text, now.astimezone(policy.timezone).date()) if text else None
        recheck_at = recheck_time(now, policy, named)
        return Step(
            PartyStatus.PENDING,
            recheck_at,
            (
                Send("pending_ack", f"pending:{pid}:{state.rounds}", state.person, pid, rid,
                     {"recheck_at": recheck_at}, reply_to_party=True,
                     thread_with_request=True),
            ),
            outcome=Outcome.PENDING,
            note=f"not yet: ask again on {recheck_at:%Y-%m-%d %H:%M} UTC"
            + (f" (just after {named:%Y-%m-%d}, the date they named)" if named else ""),
        )
    # unclear: never guess; a person decides
    sends: tuple[Send, ...] = ()
    if operator is not None:
        sends = (
            Send("unclear_review", f"unclear:{reply_key}", operator, pid, rid, facts,
                 audience="operator"),
        )
    return Step(PartyStatus.UNCLEAR, None, sends, outcome=Outcome.UNCLEAR,
                note="unclear: kept for a person")


# A named date moves the recheck, within sensible bounds: never sooner than two days (people
# need time to do what they said), never later than a year (a relationship that far out is
# not "pending" any more).
RECHECK_SOONEST = timedelta(days=2)
RECHECK_LATEST = timedelta(days=365)


def recheck_time(now: datetime, policy: Policy, named: date | None) -> datetime:
    """When to ask again after "not yet": the morning after the date the person named
    (09:00 in the network's timezone), else after INTROLOOP_PENDING_RECHECK."""
    if named is None:
        return now + policy.pending_recheck
    after = datetime.combine(named + timedelta(days=1), time(9, 0), tzinfo=policy.timezone)
    return min(max(after.astimezone(now.tzinfo), now + RECHECK_SOONEST), now + RECHECK_LATEST)


def referral_outcome(outcomes: list[Outcome | None]) -> str:
    """The referral's outcome from its parties' answers.

    Any negative → `did_not_work`; all positive → `worked`; positive and nothing negative but
    not all answered → `working`; a mix of pending/unanswered → `open`. Disagreement
    (positive and negative) is reported as `mixed` so summaries can show it honestly.
    """
    answered = [o for o in outcomes if o in (Outcome.POSITIVE, Outcome.NEGATIVE)]
    if Outcome.NEGATIVE in answered and Outcome.POSITIVE in answered:
        return "mixed"
    if Outcome.NEGATIVE in answered:
        return "did_not_work"
    if answered and len(answered) == len(outcomes):
        return "worked"
    if answered:
        return "working"
    return "open"


# Messages that ask an introduced person about an introduction: these are combined when
# several fall due for the same person together.
ASKING_KINDS = frozenset({"feedback_request", "reminder", "recheck"})
# Messages to introduced people that count against INTROLOOP_PARTY_WEEKLY_CAP. The opt-out
# confirmation is not here: it answers "stop", is the last mail that address ever gets, and
# must never wait a week.
CAPPED_KINDS = ASKING_KINDS | {"combined_request", "pending_ack", "thanks_positive",
                               "thanks_negative"}


@dataclass(frozen=True, slots=True)
class Batch:
    """What to do with one person's steps that fell due together.

    Either `hold_until` is set (quiet time or the weekly cap: leave every party as it is and
    look again then), or the steps are applied and `send` (one message, combined when the
    steps asked about several introductions) is queued.
    """

    hold_until: datetime | None
    steps: tuple[Step, ...]
    send: Send | None


def batch_for_person(steps: list[Step], now: datetime, policy: Policy,
                     history: list[datetime]) -> Batch:
    """Combine the due steps of one person's parties (across referrals) into at most one message.

    `steps` come from `due_step` for each of the person's due parties; `history` holds the
    moments of the other capped messages to that person. One message counts once against the
    cap however many introductions it asks about.
    """
    sends = [m for st in steps for m in st.sends]
    if not sends:
        return Batch(None, tuple(steps), None)
    slot = party_slot(now, policy, history)
    if slot > now:
        return Batch(slot, tuple(steps), None)
    if len(sends) == 1:
        return Batch(None, tuple(steps), sends[0])
    ordered = sorted(sends, key=lambda m: (m.referral_id or 0, m.party_id or 0))
    first = ordered[0]
    items = [
        {"party_id": m.party_id, "referral_id": m.referral_id, "kind": m.kind, "key": m.key,
         **m.facts}
        for m in ordered
    ]
    # the key names every logical message it stands for, so it is as unique as they are
    key = "combined:" + "+".join(m.key for m in ordered)
    if len(key) > 290:
        key = "combined:" + hashlib.sha256(key.encode()).hexdigest()[:40]
    combined = Send(
        kind="combined_request",
        key=key,
        to=first.to,
        party_id=first.party_id,
        referral_id=first.referral_id,
        facts={"items": items},
        reply_to_party=True,
    )
    return Batch(None, tuple(steps), combined)
