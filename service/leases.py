"""Leases: jobs only one worker may do at a time, with takeover when the holder stops.

Several `introloop run` workers may share one PostgreSQL database. Most work is split by row
claims (inbound messages, outbox rows, due parties). One job is not: reading a mailbox. Two
workers on one IMAP folder would each hold an IDLE connection and fetch every message twice
(harmless, since stored bytes are deduplicated, but wasteful), so the worker holding the
lease `fetch:<mailbox>` reads it and the others only process and send.

A lease is a row (name, holder, expires_at). The holder renews it while it works; a worker
that is killed stops renewing, and any other worker takes the lease over once it has
expired. Taking and renewing is one atomic upsert (`INSERT … ON CONFLICT DO UPDATE … WHERE
holder = me OR expires_at < now RETURNING`), which both SQLite (≥ 3.35) and PostgreSQL run
atomically, so two workers can never both win.

Times come from the worker's clock (aware UTC): workers on several hosts need synchronised
clocks (NTP), with skew well below the lease length.
"""

from __future__ import annotations

import os
import secrets
import socket
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from service.adapters.db import translate_errors
from service.adapters.tables import Lease, as_utc


def worker_id() -> str:
    """A name for this worker process: host, pid and a random part (pids get reused)."""
    return f"{socket.gethostname()[:120]}:{os.getpid()}:{secrets.token_hex(3)}"


def acquire(engine: Engine, name: str, holder: str, ttl: timedelta, now: datetime) -> bool:
    """Take or renew lease `name` for `holder` until now + ttl. True when `holder` has it."""
    insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    stmt = insert(Lease).values(name=name, holder=holder, acquired_at=now, expires_at=now + ttl)
    table = Lease.__table__  # type: ignore[attr-defined]
    stmt = stmt.on_conflict_do_update(
        index_elements=[table.c.name],
        set_={
            "holder": holder,
            "expires_at": now + ttl,
            # a renewal keeps the time it was first taken; a takeover starts afresh
            "acquired_at": sa.case((table.c.holder == holder, table.c.acquired_at), else_=now),
        },
        where=sa.or_(table.c.holder == holder, table.c.expires_at < now),
    ).returning(table.c.holder)
    with translate_errors(engine), engine.begin() as conn:
        return conn.execute(stmt).first() is not None


def release(engine: Engine, name: str, holder: str) -> None:
    """Give lease `name` up (if `holder` still has it): the next worker need not wait."""
    table = Lease.__table__  # type: ignore[attr-defined]
    with translate_errors(engine), engine.begin() as conn:
        conn.execute(sa.delete(table).where(table.c.name == name, table.c.holder == holder))


def holder(engine: Engine, name: str, now: datetime) -> str | None:
    """Who holds lease `name` right now (None when nobody does or it has expired)."""
    table = Lease.__table__  # type: ignore[attr-defined]
    with translate_errors(engine), engine.connect() as conn:
        row = conn.execute(
            sa.select(table.c.holder, table.c.expires_at).where(table.c.name == name)
        ).first()
    if row is None:
        return None
    expires = as_utc(row.expires_at)
    return row.holder if expires is not None and expires >= now else None
