"""`introloop inspect`: judge message files on their own. Reads settings and members; never
writes, sends, or needs an earlier message in the database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from service.adapters.db import make_engine
from service.adapters.dns import dkim_verifier
from service.adapters.tables import Member, MemberAlias
from service.classifier_data import load_classifier
from service.config import Settings
from service.core.intro import Member as CoreMember
from service.core.intro import Senders
from service.core.reader import ReadContext, Reading, read_bytes


def _members(settings: Settings) -> list[CoreMember]:
    """Members from the database when it exists; inspect never creates or migrates it."""
    url = settings.effective_database_url
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.is_file():
            return []
    try:
        engine = make_engine(url)
        with Session(engine) as s:
            aliases: dict[int, list[str]] = {}
            for a in s.exec(select(MemberAlias)):
                aliases.setdefault(a.member_id, []).append(a.email)
            return [CoreMember(m.email, m.name, tuple(aliases.get(m.id or 0, [])), m.timezone)
                    for m in s.exec(select(Member))]
    except Exception:
        # no tables yet (never run) or unreachable: judge with INTROLOOP_ALLOW_SENDERS only
        return []


def to_json(path: Path, reading: Reading) -> dict[str, Any]:
    """The documented JSON shape of one inspected file."""
    c = reading.classification
    is_reply = reading.kind.value == "reply"
    return {
        "file": str(path),
        "kind": reading.kind.value,
        "reason": reading.reason,
        "referrer": reading.referrer.email if reading.referrer else None,
        "parties": [{"name": p.name, "email": p.email} for p in reading.parties],
        "reply_text": reading.reply.text if (is_reply and reading.reply) else None,
        "outcome": c.outcome.value if (is_reply and c) else None,
        "confidence": round(c.confidence, 3) if (is_reply and c) else None,
    }


def inspect_files(settings: Settings, files: tuple[Path, ...] | list[Path]
                  ) -> Iterator[dict[str, Any]]:
    """One JSON-ready dict per file, in order. A file that cannot be read gets kind ignored."""
    ctx = ReadContext(
        service_address=settings.address,
        senders=Senders.build(_members(settings), settings.allow_senders),
        classify=load_classifier().classify,
        secret=settings.secret.get_secret_value().encode() if settings.secret else None,
        trusted_authserv_ids=settings.trusted_authserv_id,
        verify_dkim=dkim_verifier(settings.verify_dkim),
    )
    for path in files:
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            yield {"file": str(path), "kind": "ignored", "reason": f"cannot read file: {exc}",
                   "referrer": None, "parties": [], "reply_text": None, "outcome": None,
                   "confidence": None}
            continue
        try:
            reading = read_bytes(raw, ctx)
        except Exception as exc:  # the reader should never raise; if it does, say so per file
            yield {"file": str(path), "kind": "ignored",
                   "reason": f"could not be read ({type(exc).__name__}: {exc}); it would be "
                             "quarantined", "referrer": None, "parties": [],
                   "reply_text": None, "outcome": None, "confidence": None}
            continue
        yield to_json(path, reading)
