"""Frozen values the core passes around. No I/O here; the database layer translates to these."""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass, field


class Outcome(enum.StrEnum):
    """What a party's answer says about the referral."""

    POSITIVE = "positive"
    NEGATIVE = "negative"
    PENDING = "pending"
    OPTOUT = "optout"
    UNCLEAR = "unclear"


class Evidence(enum.IntEnum):
    """How strongly a screening verdict proves that no person is writing to us.

    The reader ranks evidence in one table (service/core/reader.py): proof of automatic mail
    beats everything; proof that a person answers us (a reply token, a reference to our mail)
    beats list evidence and hints; list evidence beats an intro; a hint decides only mail that
    nothing else explains.
    """

    HINT = 1  # a guess: Feedback-ID, List-Unsubscribe, Precedence: bulk, a no-reply sender
    LIST = 2  # a list server or a mailing: List-Id, List-Post, Mailman/ezmlm headers
    AUTOMATIC = 3  # a machine wrote it: a DSN, Auto-Submitted, a vacation responder, our own


class Kind(enum.StrEnum):
    """What an inbound message is, as `introloop inspect` reports it."""

    INTRO = "intro"
    REPLY = "reply"
    AUTOREPLY = "autoreply"
    BOUNCE = "bounce"
    IGNORED = "ignored"
    REJECTED = "rejected"


_TITLES = frozenset({"dr", "mr", "mrs", "ms", "mx", "miss", "prof", "sir", "dame", "herr", "frau",
                     "m", "mme", "mlle", "sr", "sra", "dhr", "mevr"})
# Kana, CJK ideographs and Hangul: names written in these scripts are not "first last", so
# the whole name is used rather than a guessed first word.
_NO_SPLIT = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")


@dataclass(frozen=True, slots=True)
class Person:
    """An email address (always lowercased) with the display name as written (may be empty).

    Everyone Introloop writes to may be known only by an address ("bob@acme.example" with no
    display name); templates greet them with `hello` ("Hi Bob" / "Hello") and name them in a
    sentence with `short` (first name, else the address) or `display` (full name, else the
    address).
    """

    email: str
    name: str = ""

    @property
    def display(self) -> str:
        """The full name, or the address when no name is known."""
        return self.name or self.email

    @property
    def given(self) -> str:
        """Best guess at the name to greet them by ("" when no name is known)."""
        name = self.name
        if not name:
            return ""
        if _NO_SPLIT.search(name):
            return name
        if "," in name:  # "Smith, Jane" (directory order)
            after = name.split(",", 1)[1].strip()
            name = after or name.split(",", 1)[0]
        words = [w for w in name.split() if w.strip(".").lower() not in _TITLES] or name.split()
        return words[0] if words else ""

    @property
    def first_name(self) -> str:
        """`given`, or the address's local part when no name is known."""
        return self.given or self.email.split("@", 1)[0]

    @property
    def short(self) -> str:
        """`given`, or the whole address: for the middle of a sentence."""
        return self.given or self.email

    @property
    def hello(self) -> str:
        """A greeting without the comma: "Hi Bob", or "Hello" when no name is known."""
        return f"Hi {self.given}" if self.given else "Hello"

    def __str__(self) -> str:
        return self.display


def names_of(people: Sequence[Person], *, short: bool = False) -> str:
    """ "Carol Nguyen", "Carol Nguyen and Dave Li", "Carol, Dave and Erin" (with `short`);
    addresses where no name is known."""
    names = [p.short if short else p.display for p in people]
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


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
    ``permanent`` tells a hard bounce from a soft (temporary) one. For a spam complaint
    (rule ``arf``, kind IGNORED), ``failed`` holds who complained, as far as the report says.
    ``evidence`` says how strong the verdict is: only AUTOMATIC outranks a reply token.
    """

    kind: Kind
    reason: str
    failed: tuple[str, ...] = field(default_factory=tuple)
    permanent: bool = False
    evidence: Evidence = Evidence.AUTOMATIC

    @property
    def rule(self) -> str:
        """The name of the screening rule that decided (``reason`` starts with it)."""
        return self.reason.split(":", 1)[0]
