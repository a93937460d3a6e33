"""What should alarm the operator: facts about the service and a time in, alerts out. Pure.

The facts are gathered elsewhere (`service.alerts`); this module only judges them, so every
threshold is tested with plain values and a fixed `now`. Each alert has a stable `cause`: the
outbox key `alert:<cause>:<date>` makes it go out at most once a day, and an alert whose cause
is gone is simply no longer returned, so nothing more is sent about it.

Severity: "critical" means Introloop cannot do its job right now (it cannot sign in, mail is
not going out); `introloop health` fails on those. "warning" means a person should look soon.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

CRITICAL, WARNING = "critical", "warning"


@dataclass(frozen=True, slots=True)
class SigninTrouble:
    """A channel (imap, smtp, or the OAuth token of a login) failing to sign in since `since`."""

    channel: str
    since: datetime
    error: str


@dataclass(frozen=True, slots=True)
class TokenLife:
    """A stored OAuth sign-in whose refresh token has a known end."""

    account: str
    provider: str
    expires_at: datetime
    reason: str  # why that end is known, said to the operator


@dataclass(frozen=True, slots=True)
class SetAside:
    """A message from a member, a member's alias or a person we asked that was ignored or
    rejected (see `Inbound.set_aside`)."""

    inbound_id: int
    sender: str
    who: str  # member | alias | party
    reason: str


@dataclass(frozen=True, slots=True)
class Facts:
    """Everything the judgement needs, read from the database (and the settings)."""

    signin: tuple[SigninTrouble, ...] = ()
    tokens: tuple[TokenLife, ...] = ()
    # newest message stored from the mailbox, or when watching began if none ever came
    last_mail_at: datetime | None = None
    outbox_overdue_since: datetime | None = None  # the oldest pending message's due time
    outbox_retrying: int = 0  # pending messages that have failed `Limits.outbox_attempts` times
    outbox_error: str | None = None  # the last error of one of them
    unclear_waiting: int = 0  # unclear replies waiting longer than `Limits.unclear_wait`
    unclear_oldest: datetime | None = None
    quarantined_recent: int = 0  # messages quarantined within `Limits.quarantine_window`
    quarantined_total: int = 0
    set_aside: tuple[SetAside, ...] = ()  # within `Limits.set_aside_window`, newest first


@dataclass(frozen=True, slots=True)
class Limits:
    """Thresholds. `silence` is INTROLOOP_SILENCE_ALERT (zero: never alert on silence)."""

    silence: timedelta = timedelta(days=7)
    # brief network or provider hiccups heal by themselves; a revoked sign-in does not
    signin_grace: timedelta = timedelta(minutes=15)
    token_warning: timedelta = timedelta(days=2)
    outbox_overdue: timedelta = timedelta(hours=2)
    outbox_attempts: int = 5  # with the 1, 2, 4, 8, 16 min backoff: about half an hour
    unclear_wait: timedelta = timedelta(days=3)
    quarantine_window: timedelta = timedelta(days=1)
    set_aside_window: timedelta = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Alert:
    """One reason to tell the operator, in words they can act on."""

    cause: str  # stable id: signin, token-expiry, silence, outbox, unclear, quarantine
    severity: str  # critical | warning
    title: str  # one line: the e-mail subject and the `check` line
    detail: str  # what we see
    fix: str  # what to do about it
    since: datetime | None = None
    items: tuple[str, ...] = ()  # one line per case, when the alert is about several


def evaluate(facts: Facts, now: datetime, limits: Limits | None = None) -> list[Alert]:
    """The alerts that hold at `now`, most urgent first."""
    limits = limits or Limits()
    found = [
        _signin(facts, now, limits),
        _outbox(facts, now, limits),
        _token_expiry(facts, now, limits),
        _silence(facts, now, limits),
        _unclear(facts, now, limits),
        _quarantine(facts, limits),
        _set_aside(facts, limits),
    ]
    alerts = [a for a in found if a is not None]
    return sorted(alerts, key=lambda a: a.severity != CRITICAL)


def alert_key(cause: str, day: date) -> str:
    """The outbox key that allows one e-mail per cause per day."""
    return f"alert:{cause}:{day.isoformat()}"


def ago(delta: timedelta) -> str:
    """A short human duration: 45 min, 5 h, 3 days."""
    minutes = max(0, int(delta.total_seconds() // 60))
    if minutes < 120:
        return f"{minutes} min"
    hours = minutes // 60
    return f"{hours} h" if hours < 48 else f"{hours // 24} days"


# ------------------------------------------------------------------------------ the rules


def _signin(facts: Facts, now: datetime, limits: Limits) -> Alert | None:
    lasting = [t for t in facts.signin if now - t.since >= limits.signin_grace]
    if not lasting:
        return None
    since = min(t.since for t in lasting)
    names = {"imap": "the mailbox (IMAP)", "smtp": "sending (SMTP)"}
    where = " and ".join(dict.fromkeys(names.get(t.channel, "the OAuth sign-in")
                                       for t in lasting))
    return Alert(
        cause="signin",
        severity=CRITICAL,
        title=f"Introloop cannot sign in to {where}",
        detail="; ".join(f"{t.channel}: {t.error}" for t in lasting)
        + f". Failing for {ago(now - since)}: replies are not being read or answered.",
        fix="Follow the hint in the error. For Google or Microsoft sign-in run "
        "`introloop auth google` or `introloop auth microsoft` again; then `introloop check`.",
        since=since,
    )


def _outbox(facts: Facts, now: datetime, limits: Limits) -> Alert | None:
    overdue = (facts.outbox_overdue_since is not None
               and now - facts.outbox_overdue_since >= limits.outbox_overdue)
    if not overdue and facts.outbox_retrying == 0:
        return None
    parts = []
    if overdue:
        assert facts.outbox_overdue_since is not None
        parts.append(f"a message has been due for {ago(now - facts.outbox_overdue_since)} "
                     "without being sent")
    if facts.outbox_retrying:
        parts.append(f"{facts.outbox_retrying} message(s) failed {limits.outbox_attempts} "
                     "times or more and are still being retried")
    if facts.outbox_error:
        parts.append(f"last error: {facts.outbox_error}")
    return Alert(
        cause="outbox",
        severity=CRITICAL,
        title="Introloop's outgoing mail is stuck",
        detail="; ".join(parts) + ".",
        fix="`introloop outbox --status pending` lists them; `introloop check` tests the SMTP "
        "server. Is the worker (`introloop run`) running?",
        since=facts.outbox_overdue_since,
    )


def _token_expiry(facts: Facts, now: datetime, limits: Limits) -> Alert | None:
    soon = [t for t in facts.tokens if t.expires_at - now <= limits.token_warning]
    if not soon:
        return None
    first = min(soon, key=lambda t: t.expires_at)
    left = first.expires_at - now
    when = f"in {ago(left)}" if left > timedelta(0) else f"{ago(-left)} ago"
    return Alert(
        cause="token-expiry",
        severity=WARNING if left > timedelta(0) else CRITICAL,
        title=f"The {first.provider.title()} sign-in of {first.account} expires {when}",
        detail=f"{first.reason}. When it expires Introloop can no longer read or send mail.",
        fix=f"Run `introloop auth {first.provider}` again before then.",
        since=None,
    )


def _silence(facts: Facts, now: datetime, limits: Limits) -> Alert | None:
    if limits.silence <= timedelta(0) or facts.last_mail_at is None:
        return None
    quiet = now - facts.last_mail_at
    if quiet < limits.silence:
        return None
    return Alert(
        cause="silence",
        severity=WARNING,
        title=f"No mail has reached the service mailbox for {ago(quiet)}",
        detail="Introloop can read the mailbox, but nothing new has arrived: no intros, no "
        "replies. A forwarding rule, a changed address or a full mailbox can cause this.",
        fix="Send a test message to the service address and run `introloop run --once`; "
        "INTROLOOP_SILENCE_ALERT sets how long a quiet spell may last (0s: never alert).",
        since=facts.last_mail_at,
    )


def _unclear(facts: Facts, now: datetime, limits: Limits) -> Alert | None:
    if facts.unclear_waiting == 0:
        return None
    oldest = f", the oldest for {ago(now - facts.unclear_oldest)}" if facts.unclear_oldest \
        else ""
    return Alert(
        cause="unclear",
        severity=WARNING,
        title=f"{facts.unclear_waiting} unclear answer(s) have waited more than "
        f"{ago(limits.unclear_wait)} for a person",
        detail=f"{facts.unclear_waiting} answer(s) could not be read with confidence{oldest}. "
        "Until someone decides, nobody is thanked and the referrer hears nothing.",
        fix="`introloop review` lists them; `introloop review ID positive|negative|pending` "
        "settles one (or answer the review e-mail with one word).",
        since=facts.unclear_oldest,
    )


def _quarantine(facts: Facts, limits: Limits) -> Alert | None:
    if facts.quarantined_recent == 0:
        return None
    return Alert(
        cause="quarantine",
        severity=WARNING,
        title=f"{facts.quarantined_recent} message(s) could not be processed in the last "
        f"{ago(limits.quarantine_window)}",
        detail=f"They are kept with their raw bytes and the reason ({facts.quarantined_total} "
        "in quarantine in all). Each one may be an intro or a reply nobody has acted on.",
        fix="`introloop quarantine list` shows why; after a fix, "
        "`introloop quarantine retry --all`.",
        since=None,
    )


_WHO = {"member": "member", "alias": "member's other address", "party": "person we asked"}


def _set_aside(facts: Facts, limits: Limits) -> Alert | None:
    # Mail from people we know was not acted on: a member's intro that did not count, a reply
    # that was not read as one. Each may be a lost intro or answer, so a person should look.
    if not facts.set_aside:
        return None
    n = len(facts.set_aside)
    return Alert(
        cause="set-aside",
        severity=WARNING,
        title=f"{n} message(s) from members or people we asked were set aside in the last "
        f"{ago(limits.set_aside_window)}",
        detail="They were ignored or rejected, not acted on; each line says why.",
        fix="`introloop quarantine list --set-aside` lists them and `introloop quarantine show "
        "ID` shows one; if one should have counted, fix the cause (e.g. `introloop members "
        "add … --alias`) and run `introloop quarantine retry ID`.",
        items=tuple(f"#{c.inbound_id} from {c.sender} ({_WHO.get(c.who, c.who)}): "
                    f"{c.reason[:200]}" for c in facts.set_aside[:20])
        + ((f"… and {n - 20} more",) if n > 20 else ()),
    )
