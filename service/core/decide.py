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
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from service.core.model import Classification, Outcome, Person


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
    """True when `now` falls in the network's quiet hours (start inclusive, end exclusive)."""
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
    """`now`, or the end of the quiet hours it falls in (as an aware UTC datetime)."""
    if not in_quiet_hours(now, policy):
        return now
    assert policy.quiet_hours is not None
    end = policy.quiet_hours[1]
    local = now.astimezone(policy.timezone)
    candidate = local.replace(hour=end.hour, minute=end.minute, second=0, microsecond=0)
    if candidate <= local:
        candidate += timedelta(days=1)
    # wall-clock arithmetic in the zone, then back to UTC; a DST gap at `end` moves it forward
    return candidate.astimezone(UTC)


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
                facts={"reminder": n},
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
) -> Step:
    """A reply from the party was read as `verdict`: new state and the messages it triggers.

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
        recheck_at = now + policy.pending_recheck
        return Step(
            PartyStatus.PENDING,
            recheck_at,
            (
                Send("pending_ack", f"pending:{pid}:{state.rounds}", state.person, pid, rid,
                     {"recheck_at": recheck_at}, reply_to_party=True,
                     thread_with_request=True),
            ),
            outcome=Outcome.PENDING,
            note=f"not yet: ask again on {recheck_at:%Y-%m-%d %H:%M} UTC",
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
