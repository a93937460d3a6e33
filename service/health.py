"""Health means "a recent successful cycle", read from the database: not "the process is alive".

`introloop health` (the Docker HEALTHCHECK) must be fast and must not need the mail servers,
so everything here reads tables only: the heartbeats the worker writes, and the same alert
facts the operator e-mails are built from (`service.alerts`). Problems (exit 1): the worker has
stopped reading or sending, it cannot sign in, or mail is stuck. Warnings (still exit 0): things
a person should look at that do not stop the service (a quiet mailbox, unclear replies waiting,
quarantined mail, a sign-in that will expire soon).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, select

from service.adapters.db import check_database, make_engine
from service.adapters.oauth import stored_sign_in
from service.adapters.tables import Heartbeat, as_utc
from service.alerts import current_alerts, mails_alerts
from service.config import Settings
from service.core.alerts import CRITICAL, ago


def health_report(settings: Settings, now: datetime | None = None
                  ) -> tuple[list[str], list[str]]:
    """(problems, warnings), one line each; unhealthy when `problems` is not empty."""
    now = now or datetime.now(UTC)
    engine = make_engine(settings.effective_database_url)
    check_database(engine)
    problems: list[str] = []
    warnings: list[str] = []
    # a fetch runs at least every poll interval (IDLE wakes earlier); allow generous slack
    stale = max(settings.poll_interval * 5, timedelta(minutes=10))
    with Session(engine) as s:
        try:
            beats = {b.name: as_utc(b.at) for b in s.exec(select(Heartbeat))}
        except SQLAlchemyError:
            return ["the database has no Introloop tables yet: has `introloop run` started?"], []
    for name, what in (("fetch", "read the mailbox"), ("flush_outbox", "sent the outbox")):
        at = beats.get(name)
        if at is None:
            problems.append(f"the worker has never {what}")
        elif now - at > stale:
            problems.append(f"the worker last {what} {ago(now - at)} ago")
    try:
        alerts = current_alerts(engine, settings, now)
    except SQLAlchemyError as exc:  # an older schema: the worker migrates when it starts
        problems.append(f"cannot read the alert facts ({type(exc).__name__}): restart the "
                        "worker so it migrates the database")
        return problems, warnings
    for alert in alerts:
        line = f"{alert.title}: {alert.detail}"
        (problems if alert.severity == CRITICAL else warnings).append(line)
    return problems, warnings


def health_problems(settings: Settings, now: datetime | None = None) -> list[str]:
    """What is wrong right now, one line each (empty when healthy)."""
    return health_report(settings, now)[0]


def status_checks(settings: Settings, engine: Any, now: datetime
                  ) -> list[tuple[str, bool | None, str]]:
    """The lines `introloop check` adds to its server checks: sign-in method and OAuth state,
    TLS, who gets alerts, and every current alert. ok None means a warning."""
    lines: list[tuple[str, bool | None, str]] = []
    if settings.uses_oauth and settings.imap_user:
        lines.append(_oauth_line(settings, engine, now))
    elif settings.uses_imap or settings.uses_smtp:
        lines.append(("signin", True, f"password sign-in ({settings.provider} provider)"))
    if settings.tls_insecure:
        lines.append(("tls", None, "INTROLOOP_TLS_INSECURE=true: server certificates are NOT "
                      "checked; only for test servers, never in production"))
    for what, host, mode in (("IMAP", settings.imap_host, settings.imap_tls),
                             ("SMTP", settings.smtp_host, settings.smtp_tls)):
        if host and mode == "none" and not _loopback(host):
            lines.append(("tls", None, f"{what} to {host} without TLS: the password or token "
                          f"travels in clear; set INTROLOOP_{what}_TLS=ssl or starttls"))
    if not settings.operator:
        lines.append(("alerts", None, "INTROLOOP_OPERATOR is not set: nobody is e-mailed when "
                      "sign-in fails or mail gets stuck"))
    elif mails_alerts(settings):
        lines.append(("alerts", True, f"alerts go to {settings.operator}, at most once a day "
                      "per cause"))
    else:
        lines.append(("alerts", True, "no mail server configured: alerts are shown here only"))
    try:
        alerts = current_alerts(engine, settings, now)
    except SQLAlchemyError as exc:
        return [*lines, ("alerts", False, f"cannot read the alert facts: {type(exc).__name__}")]
    for alert in alerts:
        cases = "".join(f" {line}." for line in alert.items[:5])
        lines.append((f"alert:{alert.cause}", False if alert.severity == CRITICAL else None,
                      f"{alert.title}. {alert.detail}{cases} Fix: {alert.fix}"))
    return lines


def _oauth_line(settings: Settings, engine: Any, now: datetime) -> tuple[str, bool | None, str]:
    row = stored_sign_in(engine, settings.imap_user or "")
    provider = settings.provider
    if row is None:
        return ("oauth", False, f"no {provider} sign-in is stored for {settings.imap_user}: "
                f"run `introloop auth {provider}`")
    if row.provider != provider:
        return ("oauth", False, f"the stored sign-in is {row.provider}'s but "
                f"INTROLOOP_PROVIDER={provider}: run `introloop auth {provider}`")
    signed = as_utc(row.signed_in_at)
    refreshed = as_utc(row.refreshed_at)
    text = (f"{provider} OAuth for {row.account}: signed in {signed:%Y-%m-%d}" if signed
            else f"{provider} OAuth for {row.account}")
    if refreshed is not None:
        text += f", token refreshed {ago(now - refreshed)} ago"
    ends = as_utc(row.refresh_expires_at)
    if ends is not None:
        text += f"; the sign-in ends {ends:%Y-%m-%d %H:%M} UTC ({row.expiry_reason})"
    if row.failing_since is not None:
        return ("oauth", False, f"{text}; refresh failing since "
                f"{as_utc(row.failing_since):%Y-%m-%d %H:%M} UTC: {row.last_error}")
    return ("oauth", True, text)


def _loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")
