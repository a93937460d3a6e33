"""Safe header access: real-world headers are malformed often enough that every read is guarded.

The modern `email.policy.default` parser raises on some malformed headers only when the header
is *read*, so every accessor here catches that and falls back to the raw value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from email.header import decode_header, make_header
from email.message import EmailMessage, Message
from email.utils import getaddresses, parseaddr

from service.core import gateway
from service.core.model import Person

_MSGID = re.compile(r"<([^<>\s]+)>")
_CTRL = re.compile(r"[\x00-\x1f\x7f]+")


def header(msg: Message, name: str) -> str:
    """The decoded value of the first header `name`, or "" — never raises."""
    try:
        value = msg.get(name)
    except Exception:  # malformed header: fall back to the raw value
        value = _raw(msg, name)
    if value is None:
        return ""
    try:
        text = str(value)
    except Exception:
        text = _raw(msg, name) or ""
    return _CTRL.sub(" ", text).strip()


def headers(msg: Message, name: str) -> list[str]:
    """All decoded values of header `name` (e.g. every Received or Delivered-To)."""
    out: list[str] = []
    try:
        values = msg.get_all(name) or []
    except Exception:
        values = [v for k, v in _raw_items(msg) if k.lower() == name.lower()]
    for value in values:
        try:
            out.append(_CTRL.sub(" ", str(value)).strip())
        except Exception:
            continue
    return out


def _raw_items(msg: Message) -> list[tuple[str, str]]:
    try:
        return [(k, v if isinstance(v, str) else str(v)) for k, v in msg._headers]
    except Exception:
        return []


def _raw(msg: Message, name: str) -> str | None:
    for key, value in _raw_items(msg):
        if key.lower() == name.lower():
            try:
                return str(make_header(decode_header(value)))
            except Exception:
                return value
    return None


def _clean_name(name: str) -> str:
    name = _CTRL.sub(" ", name or "").strip().strip('"').strip("'").strip()
    # a gateway's "[EXTERNAL]" next to a name is not part of it
    return gateway.clean_name(re.sub(r"\s+", " ", name))


_QUOTED_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def _semicolons(value: str) -> str:
    """Outlook and some Exchange gateways separate addresses with ";" (as Outlook shows
    them); RFC 5322 uses ",". Without a group ("team: a, b;") a ";" can only be that."""
    if ";" not in value:
        return value
    bare = _QUOTED_STRING.sub("", value)
    if ":" in bare:  # group syntax: the ";" ends the group
        return value
    return re.sub(r'("(?:[^"\\]|\\.)*")|;', lambda m: m.group(1) or ",", value)


def _decoded(raw: str) -> str:
    try:
        return _CTRL.sub(" ", str(make_header(decode_header(raw)))).strip()
    except Exception:
        return raw


def addresses(msg: Message, *names: str) -> list[Person]:
    """Every address in the given headers (To, Cc, ...), lowercased, names kept, de-duplicated.

    Group syntax, comments and RFC 2047 names are handled by the stdlib parser; anything it
    cannot parse is skipped rather than guessed.
    """
    seen: set[str] = set()
    out: list[Person] = []
    for name in names:
        raw_values = headers(msg, name)
        raws = [v for k, v in _raw_items(msg) if k.lower() == name.lower()]
        if any(";" in r for r in raws):
            # the parsed value has already lost what follows a stray ";": start from the raw
            raw_values = [_decoded(_semicolons(r)) for r in raws]
        for display, addr in getaddresses(raw_values):
            addr = addr.strip().strip("<>").lower()
            if "@" not in addr or " " in addr or addr in seen:
                continue
            local, _, domain = addr.rpartition("@")
            if not local or "." not in domain:
                continue
            seen.add(addr)
            out.append(Person(email=addr, name=_clean_name(display)))
    return out


def sender(msg: Message) -> Person | None:
    """The From address (first one), or None when there is none that parses."""
    people = addresses(msg, "From")
    if people:
        return people[0]
    _, addr = parseaddr(header(msg, "From"))
    return Person(addr.lower()) if "@" in addr else None


def message_id(msg: Message) -> str | None:
    """The Message-ID without angle brackets, or None."""
    ids = message_ids(header(msg, "Message-ID"))
    return ids[0] if ids else None


def message_ids(value: str) -> list[str]:
    """Every <id> in a References/In-Reply-To value, in order, without brackets."""
    found = _MSGID.findall(value or "")
    if not found and value and "@" in value and " " not in value.strip():
        found = [value.strip()]  # some clients omit the brackets
    return found


def references(msg: Message) -> list[str]:
    """In-Reply-To first, then References newest-first: the ids a reply points at."""
    out: list[str] = []
    for mid in message_ids(header(msg, "In-Reply-To")) + list(
        reversed(message_ids(" ".join(headers(msg, "References"))))
    ):
        if mid not in out:
            out.append(mid)
    return out


def recipients_seen(msg: Message) -> list[str]:
    """Every address the message was delivered to, as far as headers tell (lowercased).

    Delivered-To and X-Original-To are written by the receiving server and are the only place
    a BCC'd or plus-addressed recipient shows up; To and Cc come after them.
    """
    out: list[str] = []
    for person in addresses(msg, "Delivered-To", "X-Original-To", "Envelope-To", "To", "Cc"):
        if person.email not in out:
            out.append(person.email)
    return out


def is_emailmessage(msg: object) -> bool:
    """True for the modern EmailMessage API (what the core expects)."""
    return isinstance(msg, EmailMessage)


def unique(items: Iterable[str]) -> list[str]:
    """Keep the first of each item, in order."""
    seen: set[str] = set()
    return [x for x in items if not (x in seen or seen.add(x))]  # type: ignore[func-returns-value]
