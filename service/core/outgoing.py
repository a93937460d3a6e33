"""Build outgoing messages: headers that are safe, stable and honest about being automatic.

Python 3.11.7 (on the project's machines) predates CPython's header-injection fixes
(CVE-2024-6923, CVE-2026-1299), so every header value is checked here for CR, LF and NUL,
and display names are flattened before they reach an Address.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from urllib.parse import quote

from service.core.model import Person

_FORBIDDEN = re.compile(r"[\r\n\x00]")
_NAME_JUNK = re.compile(r"[\x00-\x1f\x7f]+")


class HeaderInjection(ValueError):
    """A header value contained CR, LF or NUL."""


def safe(value: str, field: str) -> str:
    """`value` unchanged, or HeaderInjection if it could start a new header line."""
    if _FORBIDDEN.search(value):
        raise HeaderInjection(f"{field} contains a line break or NUL; refusing to send")
    return value


def clean_name(name: str) -> str:
    """A display name with control characters (CR, LF, NUL, tabs) turned into spaces."""
    return " ".join(_NAME_JUNK.sub(" ", name or "").split())


def address(person: Person) -> Address:
    """An Address object for `person`: the stdlib quotes and RFC 2047-encodes the name."""
    local, _, domain = person.email.partition("@")
    safe(person.email, "address")
    return Address(display_name=clean_name(person.name), username=local, domain=domain)


def stable_message_id(secret: bytes, key: str, kind: str, domain: str) -> str:
    """A Message-ID derived from the outbox key: the same logical message gets the same id.

    Deterministic ids let a re-enqueue after a crash, or a check of the Sent folder, recognise
    a message that may already have gone out.
    """
    digest = hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()[:24]
    kind_part = re.sub(r"[^a-z0-9-]", "-", kind.lower())
    return f"{kind_part}.{digest}@{domain}"


_MINTED = re.compile(r"^[a-z0-9-]+\.[0-9a-f]{24}@(.+)$")


def is_minted(message_id: str, domain: str) -> bool:
    """True when `message_id` has the shape of one `stable_message_id` made for `domain`.

    The domain alone is not enough: members often write from the network's own domain.
    """
    m = _MINTED.match(message_id.strip("<>").lower())
    return bool(m) and m.group(1) == domain.lower()


@dataclass(frozen=True, slots=True)
class Envelope:
    """Everything about an outgoing message except its rendered content."""

    sender: Person  # the service address with the network's name
    to: Person
    message_id: str  # without brackets
    date: datetime
    reply_to: str | None = None
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    unsubscribe: str | None = None  # mailto: address carrying the recipient's stop token
    auto_submitted: str = "auto-generated"


def build_message(env: Envelope, subject: str, text: str, html: str | None) -> EmailMessage:
    """A multipart/alternative message (text first, HTML last) with safe headers."""
    msg = EmailMessage()
    msg["From"] = address(env.sender)
    msg["To"] = address(env.to)
    msg["Subject"] = safe(subject, "Subject")
    msg["Date"] = format_datetime(env.date)
    msg["Message-ID"] = safe(f"<{env.message_id}>", "Message-ID")
    if env.reply_to:
        msg["Reply-To"] = safe(env.reply_to, "Reply-To")
    refs = [r for r in env.references if r != env.in_reply_to]
    if env.in_reply_to:
        msg["In-Reply-To"] = safe(f"<{env.in_reply_to}>", "In-Reply-To")
        refs.append(env.in_reply_to)
    if refs:
        # threads our message under the conversation the recipient already has
        msg["References"] = safe(" ".join(f"<{r}>" for r in refs[-10:]), "References")
    # RFC 3834: we are automatic; well-behaved auto-responders stay quiet
    msg["Auto-Submitted"] = env.auto_submitted
    msg["X-Auto-Response-Suppress"] = "OOF, AutoReply"
    msg["X-Introloop-Loop"] = "1"
    if env.unsubscribe:
        msg["List-Unsubscribe"] = safe(f"<mailto:{env.unsubscribe}?subject=stop>", "List-Unsub")
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg.set_content(text)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    return msg


def mailto(address_: str, subject: str, body: str = "") -> str:
    """A mailto: URL with a prefilled subject and body (for one-click answers)."""
    url = f"mailto:{address_}?subject={quote(subject)}"
    if body:
        url += f"&body={quote(body)}"
    return url
