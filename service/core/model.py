"""Frozen values the core passes around. No I/O here; the database layer translates to these."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Outcome(enum.StrEnum):
    """What a party's answer says about the referral."""

    POSITIVE = "positive"
    NEGATIVE = "negative"
    PENDING = "pending"
    OPTOUT = "optout"
    UNCLEAR = "unclear"


class Kind(enum.StrEnum):
    """What an inbound message is, as `introloop inspect` reports it."""

    INTRO = "intro"
    REPLY = "reply"
    AUTOREPLY = "autoreply"
    BOUNCE = "bounce"
    IGNORED = "ignored"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class Person:
    """An email address (always lowercased) with the display name as written (may be empty)."""

    email: str
    name: str = ""

    @property
    def display(self) -> str:
        """The name if there is one, else the address: what a human would call them."""
        return self.name or self.email

    @property
    def first_name(self) -> str:
        """First word of the name, or the address's local part when no name is known."""
        if self.name:
            return self.name.split()[0]
        return self.email.split("@", 1)[0]


@dataclass(frozen=True, slots=True)
class Classification:
    """The outcome read from a reply's new text.

    ``confidence`` is in 0..1; ``rule`` names what decided (a phrase rule, the model, a
    one-click address), so logs and `inspect` can say *why*.
    """

    outcome: Outcome
    confidence: float
    rule: str
    language: str | None = None


@dataclass(frozen=True, slots=True)
class Screening:
    """Verdict of the automatic-mail screen: a bounce, an auto-reply, list mail or our own loop.

    ``kind`` is Kind.BOUNCE, Kind.AUTOREPLY or Kind.IGNORED (list/bulk/loop/no-reply senders).
    For bounces, ``failed`` holds the recipient addresses that failed (lowercased) and
    ``permanent`` tells a hard bounce from a soft (temporary) one.
    """

    kind: Kind
    reason: str
    failed: tuple[str, ...] = field(default_factory=tuple)
    permanent: bool = False
