"""Operator queries behind the CLI: members, referrals, quarantine, outbox, unclear replies."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from service.adapters.tables import (
    Inbound,
    Member,
    MemberAlias,
    Outbox,
    Party,
    Referral,
    Reply,
    as_utc,
)
from service.config import ConfigError, Settings
from service.core.decide import referral_outcome
from service.core.model import Outcome
from service.core.summary import MemberSummary, member_summary_json

_EMAIL = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")


def _engine(settings: Settings) -> Engine:
    from service.app import build_engine

    return build_engine(settings)


def _email(value: str, what: str = "address") -> str:
    value = value.strip().lower()
    if not _EMAIL.match(value):
        raise ConfigError([f"{value!r} is not an email {what}"])
    return value


def _iso(value: Any) -> str | None:
    value = as_utc(value)
    return value.isoformat() if value is not None else None


# ------------------------------------------------------------------------------- members


def add_member(settings: Settings, email: str, name: str, timezone: str | None,
               aliases: Iterable[str], *, dry_run: bool = False) -> str:
    """Add or update a member; aliases are added (never removed here)."""
    email = _email(email)
    alias_list = [_email(a, "alias") for a in aliases]
    if timezone:
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError([f"--timezone {timezone!r} is not an IANA timezone "
                               "(e.g. Europe/Paris)"]) from None
    if email in alias_list:
        raise ConfigError([f"{email} cannot be an alias of itself"])
    with Session(_engine(settings)) as s, s.begin():
        member = s.exec(select(Member).where(Member.email == email)).first()
        for a in alias_list:
            owner = s.exec(select(MemberAlias).where(MemberAlias.email == a)).first()
            other = s.exec(select(Member).where(Member.email == a)).first()
            if other is not None or (owner is not None and
                                     (member is None or owner.member_id != member.id)):
                raise ConfigError([f"{a} already belongs to another member"])
        if dry_run:
            return f"would {'update' if member else 'add'} member {email}"
        if member is None:
            member = Member(email=email, name=name, timezone=timezone)
            s.add(member)
            s.flush()
            verb = "added"
        else:
            member.name = name or member.name
            member.timezone = timezone or member.timezone
            verb = "updated"
        assert member.id is not None
        for a in alias_list:
            if s.exec(select(MemberAlias).where(MemberAlias.email == a)).first() is None:
                s.add(MemberAlias(member_id=member.id, email=a))
    extra = f" with aliases {', '.join(alias_list)}" if alias_list else ""
    return f"{verb} member {email}{extra}"


def remove_member(settings: Settings, email: str, *, dry_run: bool = False) -> str:
    """Remove a member and their aliases; their referrals stay."""
    email = _email(email)
    with Session(_engine(settings)) as s, s.begin():
        member = s.exec(select(Member).where(Member.email == email)).first()
        if member is None:
            raise ConfigError([f"{email} is not a member (see `introloop members list`)"])
        if dry_run:
            return f"would remove member {email}"
        for alias in s.exec(select(MemberAlias).where(MemberAlias.member_id == member.id)):
            s.delete(alias)
        s.delete(member)
    return f"removed member {email}"


def list_members(settings: Settings) -> list[dict[str, Any]]:
    """Every member with aliases."""
    with Session(_engine(settings)) as s:
        out = []
        for m in s.exec(select(Member).order_by(col(Member.email))):
            aliases = [a.email for a in
                       s.exec(select(MemberAlias).where(MemberAlias.member_id == m.id))]
            out.append({"email": m.email, "name": m.name, "timezone": m.timezone,
                        "aliases": sorted(aliases)})
        return out


# ------------------------------------------------------------------------------- referrals


def list_referrals(settings: Settings) -> list[dict[str, Any]]:
    """Every referral with its parties."""
    with Session(_engine(settings)) as s:
        out = []
        for r in s.exec(select(Referral).order_by(col(Referral.id))):
            parties = s.exec(select(Party).where(Party.referral_id == r.id)
                             .order_by(col(Party.id))).all()
            outcomes = [Outcome(p.outcome) if p.outcome else None for p in parties]
            out.append({
                "id": r.id,
                "referrer": r.referrer_email,
                "subject": r.subject,
                "introduced_at": _iso(r.introduced_at),
                "status": r.status,
                "outcome": referral_outcome(outcomes),
                "parties": [{
                    "email": p.email, "name": p.name, "status": p.status,
                    "outcome": p.outcome, "next_due_at": _iso(p.next_due_at),
                    "requests_sent": p.requests_sent,
                } for p in parties],
            })
        return out


# ------------------------------------------------------------------------------- quarantine


def _inbound_row(r: Inbound) -> dict[str, Any]:
    return {"id": r.id, "status": r.status, "kind": r.kind, "reason": r.reason,
            "sender": r.sender, "subject": r.subject, "message_id": r.message_id,
            "size": r.size, "received_at": _iso(r.received_at), "set_aside": r.set_aside}


def list_quarantine(settings: Settings, *, show_all: bool = False,
                    set_aside: bool = False) -> list[dict[str, Any]]:
    """Quarantined messages; with show_all also rejected and ignored ones; with set_aside
    only ignored or rejected mail from members, their aliases and people we asked."""
    with Session(_engine(settings)) as s:
        q = select(Inbound)
        if set_aside:
            q = q.where(col(Inbound.set_aside).is_not(None))
        elif show_all:
            q = q.where((Inbound.status == "quarantined") |
                        col(Inbound.kind).in_(["rejected", "ignored"]))
        else:
            q = q.where(Inbound.status == "quarantined")
        return [_inbound_row(r) for r in s.exec(q.order_by(col(Inbound.id)))]


def show_inbound(settings: Settings, inbound_id: int) -> dict[str, Any] | None:
    """One stored message with its raw bytes."""
    with Session(_engine(settings)) as s:
        r = s.get(Inbound, inbound_id)
        if r is None:
            return None
        return {**_inbound_row(r), "raw": r.raw}


def quarantined_ids(settings: Settings) -> list[int]:
    """Ids of every quarantined message."""
    with Session(_engine(settings)) as s:
        return [i for i in s.exec(select(Inbound.id).where(Inbound.status == "quarantined")
                                  .order_by(col(Inbound.id))) if i is not None]


def requeue_inbound(loop: Any, inbound_id: int) -> None:
    """Mark a quarantined message as new so the loop processes it again. A rejected or
    ignored one may be named too (a member added after their first intro arrived)."""
    with loop.session() as s:
        r = s.get(Inbound, inbound_id)
        if r is not None and (r.status == "quarantined" or (
                r.status == "processed" and r.kind in ("rejected", "ignored"))):
            r.status = "new"


# ------------------------------------------------------------------------------- outbox


def list_outbox(settings: Settings, status: str | None = None) -> list[dict[str, Any]]:
    """Outgoing messages, newest last."""
    with Session(_engine(settings)) as s:
        q = select(Outbox)
        if status:
            q = q.where(Outbox.status == status)
        return [{
            "id": r.id, "key": r.key, "kind": r.kind, "to": r.to_email, "subject": r.subject,
            "status": r.status, "attempts": r.attempts, "last_error": r.last_error,
            "message_id": r.message_id, "created_at": _iso(r.created_at),
            "next_attempt_at": _iso(r.next_attempt_at), "sent_at": _iso(r.sent_at),
        } for r in s.exec(q.order_by(col(Outbox.id)))]


def retry_outbox(settings: Settings, outbox_id: int, *, dry_run: bool = False) -> str:
    """Put a failed (or cancelled) row back to pending."""
    from service.adapters.tables import utcnow

    with Session(_engine(settings)) as s, s.begin():
        r = s.get(Outbox, outbox_id)
        if r is None:
            raise ConfigError([f"no outbox row #{outbox_id} (see `introloop outbox`)"])
        if r.status not in ("failed", "cancelled"):
            raise ConfigError([f"outbox row #{outbox_id} is {r.status}, not failed"])
        what = f"{r.kind} to {r.to_email}"  # read before the commit expires the row
        if dry_run:
            return f"would re-queue #{outbox_id} ({what})"
        r.status, r.next_attempt_at, r.last_error = "pending", utcnow(), None
        r.attempts = 0  # a fresh series of retries, with backoff from the start
    return f"re-queued #{outbox_id} ({what}); it keeps its Message-ID"


# ------------------------------------------------------------------------------- review


def list_unclear(settings: Settings) -> list[dict[str, Any]]:
    """Replies waiting for a person."""
    with Session(_engine(settings)) as s:
        out = []
        q = select(Reply).where(Reply.outcome == "unclear", col(Reply.settled_by).is_(None))
        for r in s.exec(q.order_by(col(Reply.id))):
            party = s.get(Party, r.party_id) if r.party_id else None
            out.append({"id": r.id, "from": r.from_email, "text": r.text, "rule": r.rule,
                        "flagged": r.flagged, "party": party.email if party else None,
                        "referral_id": party.referral_id if party else None,
                        "created_at": _iso(r.created_at)})
        return out


def summary_json(s: MemberSummary) -> dict[str, Any]:
    """A member's summary as JSON-friendly data (see core.summary.member_summary_json)."""
    return member_summary_json(s)
