"""Operator alerts: gather the facts from the database, let `core.alerts` judge, mail the verdict.

- `SigninRecorder` is handed to the IMAP and SMTP adapters (by `service.app`): every sign-in
  outcome lands in the heartbeat table (`signin:<channel>` = last success,
  `signin_failed:<channel>` = failing since, with the error), so the alerts, `check` and
  `health` see it without touching a mail server.
- `gather_facts` reads only the database: no network, fast enough for `introloop health`.
- `raise_alerts(loop)` runs on every scheduler tick and in `run --once`: it keeps an OAuth
  sign-in fresh, then queues one `operator_alert` per current cause through the outbox with the
  key `alert:<cause>:<YYYY-MM-DD>` (at most one e-mail per cause per day), and cancels queued
  alerts whose cause went away before they were sent.

Alerts are mailed only when a real mailbox or SMTP server is configured: with the local
Maildir transport (the demo) they are shown by `introloop check` alone.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from service.adapters.db import put_heartbeat, translate_errors
from service.adapters.tables import Heartbeat, Inbound, OAuthToken, Outbox, Reply, as_utc
from service.config import Settings
from service.core.alerts import (
    Alert,
    Facts,
    Limits,
    SetAside,
    SigninTrouble,
    TokenLife,
    alert_key,
    evaluate,
)
from service.core.decide import Send
from service.core.model import Person
from service.loopbase import PassReport

if TYPE_CHECKING:
    from service.loopbase import LoopBase

log = structlog.get_logger("introloop.alerts")

SIGNIN_OK, SIGNIN_FAILED = "signin:", "signin_failed:"
WATCHING = "watching_since"  # first alert tick: the silence clock starts here if no mail came
ALERT_KIND = "operator_alert"
# a healthy sign-in is written at most this often (every IMAP/SMTP connect would be noise)
_QUIET_WRITES = timedelta(minutes=10)


def limits_for(settings: Settings) -> Limits:
    """The thresholds, with INTROLOOP_SILENCE_ALERT."""
    return Limits(silence=settings.silence_alert)


class SigninRecorder:
    """Called by the adapters with (channel, None) after a sign-in and (channel, error) after a
    failed one; keeps `signin_failed:<channel>` with the time the failures began."""

    def __init__(self, engine: Engine, clock: Any):
        self.engine, self.clock = engine, clock
        self._last: dict[str, tuple[str | None, datetime]] = {}

    def __call__(self, channel: str, error: str | None) -> None:
        """Record one sign-in outcome."""
        now = self.clock.now()
        last = self._last.get(channel)
        if last is not None and last[0] == error and now - last[1] < _QUIET_WRITES:
            return  # nothing new to say
        with Session(self.engine) as s, s.begin():
            if error is None:
                put_heartbeat(s, SIGNIN_OK + channel, now)
                failed = s.get(Heartbeat, SIGNIN_FAILED + channel)
                if failed is not None:
                    s.delete(failed)
                    log.info("signin_recovered", channel=channel)
            else:
                # `at` stays: failing since the first failure
                put_heartbeat(s, SIGNIN_FAILED + channel, now, error[:500], keep_at=True)
        self._last[channel] = (error, now)


def gather_facts(engine: Engine, settings: Settings, now: datetime,
                 limits: Limits | None = None) -> Facts:
    """Read what the alert rules judge. Database only; no mail server is contacted."""
    limits = limits or limits_for(settings)
    used = {"imap": settings.uses_imap, "smtp": settings.uses_smtp}
    # a database going down mid-read is an outage the worker reports once and waits out (a
    # DatabaseError), not a traceback from the alert tick
    with translate_errors(engine), Session(engine) as s:
        beats = {b.name: b for b in s.exec(select(Heartbeat))}
        # a channel no longer configured keeps no stale failure alive
        signin = [SigninTrouble(name.removeprefix(SIGNIN_FAILED), as_utc(b.at) or now, b.detail)
                  for name, b in beats.items()
                  if name.startswith(SIGNIN_FAILED) and used.get(name.removeprefix(SIGNIN_FAILED))]
        tokens: list[TokenLife] = []
        if settings.uses_oauth and settings.imap_user:
            row = s.get(OAuthToken, settings.imap_user.lower())
            if row is not None and row.failing_since is not None:
                signin.append(SigninTrouble("oauth", as_utc(row.failing_since) or now,
                                            row.last_error or "refresh failed"))
            if row is not None and row.refresh_expires_at is not None:
                tokens.append(TokenLife(row.account, row.provider,
                                        as_utc(row.refresh_expires_at) or now, row.expiry_reason))
        newest = as_utc(s.exec(select(func.max(Inbound.received_at))).one())
        watching = beats.get(WATCHING)
        last_mail = newest or (as_utc(watching.at) if watching else None)

        pending = select(Outbox).where(Outbox.status == "pending")
        oldest_due = as_utc(s.exec(select(func.min(Outbox.next_attempt_at))
                                   .where(Outbox.status == "pending")).one())
        retrying = s.exec(pending.where(Outbox.attempts >= limits.outbox_attempts)
                          .order_by(col(Outbox.next_attempt_at).desc())).all()

        unclear = (select(func.count(), func.min(Inbound.received_at))
                   .select_from(Reply).join(Inbound, sa.and_(Inbound.id == Reply.inbound_id))
                   .where(Reply.outcome == "unclear", col(Reply.settled_by).is_(None),
                          Inbound.received_at <= now - limits.unclear_wait))
        unclear_count, unclear_oldest = s.exec(unclear).one()
        quarantined = select(func.count()).select_from(Inbound) \
            .where(Inbound.status == "quarantined")
        total = s.exec(quarantined).one()
        recent = s.exec(quarantined.where(
            Inbound.processed_at >= now - limits.quarantine_window)).one()
        set_aside = [SetAside(r.id or 0, r.sender or "?", r.set_aside or "", r.reason or "")
                     for r in s.exec(select(Inbound).where(
                         col(Inbound.set_aside).is_not(None),
                         col(Inbound.processed_at) >= now - limits.set_aside_window)
                         .order_by(col(Inbound.id).desc()).limit(200))]
    return Facts(
        signin=tuple(signin),
        tokens=tuple(tokens),
        last_mail_at=last_mail,
        outbox_overdue_since=oldest_due if oldest_due is not None and oldest_due <= now
        else None,
        outbox_retrying=len(retrying),
        outbox_error=retrying[0].last_error if retrying else None,
        unclear_waiting=int(unclear_count or 0),
        unclear_oldest=as_utc(unclear_oldest),
        quarantined_recent=int(recent or 0),
        quarantined_total=int(total or 0),
        set_aside=tuple(set_aside),
    )


def current_alerts(engine: Engine, settings: Settings, now: datetime) -> list[Alert]:
    """The alerts that hold now (for `check` and `health`)."""
    limits = limits_for(settings)
    return evaluate(gather_facts(engine, settings, now, limits), now, limits)


def mails_alerts(settings: Settings) -> bool:
    """Alerts are e-mailed when there is an operator and a real mailbox or SMTP server."""
    return bool(settings.operator) and (settings.uses_imap or settings.uses_smtp)


def raise_alerts(loop: LoopBase) -> PassReport:
    """One tick: keep the OAuth sign-in fresh, then queue today's alerts and drop stale ones."""
    report = PassReport()
    settings = loop.settings
    if loop.keep_signed_in is not None:
        try:
            loop.keep_signed_in()  # refreshes only near expiry; a failure is recorded on the row
        except Exception as exc:
            log.warning("keep_signed_in_failed", error=str(exc).splitlines()[0] if str(exc)
                        else type(exc).__name__)
    now = loop.clock.now()
    with loop.session() as s:
        put_heartbeat(s, WATCHING, now, "the silence alert counts from here", only_new=True)
    if not mails_alerts(settings):
        return report
    assert settings.operator is not None
    alerts = current_alerts(loop.engine, settings, now)
    day = now.astimezone(settings.zone).date()
    wanted = {alert_key(a.cause, day) for a in alerts}
    operator = Person(settings.operator, "Operator")
    with loop.session() as s:
        for alert in alerts:
            send = Send(kind=ALERT_KIND, key=alert_key(alert.cause, day), to=operator,
                        facts=_context(alert, alerts, settings), audience="operator")
            if loop.enqueue(s, send, report) is not None:
                log.warning("operator_alert", cause=alert.cause, title=alert.title)
        # an alert still queued (SMTP down, say) whose cause has gone, or that a newer one of
        # the same cause replaces, would only confuse: cancel it
        for row in s.exec(select(Outbox).where(Outbox.kind == ALERT_KIND,
                                               Outbox.status == "pending")):
            if row.key not in wanted:
                row.status, row.last_error = "cancelled", "its cause went away before sending"
        loop._beat(s, "alerts", ", ".join(sorted(a.cause for a in alerts)))
    return report


def _context(alert: Alert, alerts: list[Alert], settings: Settings) -> dict[str, Any]:
    """The template variables of `operator_alert` (see its .txt.j2)."""
    data = asdict(alert)
    since = alert.since
    data["since"] = since.astimezone(settings.zone).strftime("%Y-%m-%d %H:%M %Z") if since else ""
    return {
        "alert": data,
        "others": [a.title for a in alerts if a.cause != alert.cause],
    }
