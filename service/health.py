"""Health means "a recent successful cycle", read from heartbeats: not "the process is alive"."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlmodel import Session, col, select

from service.adapters.db import check_database, make_engine
from service.adapters.tables import Heartbeat, Outbox, as_utc
from service.config import Settings


def health_problems(settings: Settings, now: datetime | None = None) -> list[str]:
    """What is wrong right now, one line each (empty when healthy)."""
    now = now or datetime.now(UTC)
    engine = make_engine(settings.effective_database_url)
    check_database(engine)
    problems: list[str] = []
    # a fetch runs at least every poll interval (IDLE wakes earlier); allow generous slack
    stale = max(settings.poll_interval * 5, timedelta(minutes=10))
    with Session(engine) as s:
        try:
            beats = {b.name: as_utc(b.at) for b in s.exec(select(Heartbeat))}
        except Exception:
            return ["the database has no Introloop tables yet: has `introloop run` started?"]
        for name, what in (("fetch", "read the mailbox"), ("flush_outbox", "sent the outbox")):
            at = beats.get(name)
            if at is None:
                problems.append(f"the worker has never {what}")
            elif now - at > stale:
                problems.append(f"the worker last {what} {_ago(now - at)} ago")
        oldest = s.exec(
            select(Outbox.next_attempt_at).where(Outbox.status == "pending")
            .order_by(col(Outbox.next_attempt_at))
        ).first()
        oldest = as_utc(oldest)
        if oldest is not None and now - oldest > timedelta(hours=2):
            problems.append(f"outbox stuck: a message has been due for {_ago(now - oldest)}")
    return problems


def _ago(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes < 120:
        return f"{minutes} min"
    hours = minutes // 60
    return f"{hours} h" if hours < 48 else f"{hours // 24} days"
