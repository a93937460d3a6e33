"""Build outgoing messages: headers that are safe, stable and honest about being automatic.

Python 3.11.7 (on the project's machines) predates CPython's header-injection fixes
(CVE-2024-6923, CVE-2026-1299), so every header value is checked here for CR, LF and NUL,
and display names are flattened before they reach an Address. That is not enough on its own:
the email package decodes RFC 2047 encoded-words found in a value it is given, so a name like
`=?utf-8?q?Bob=0D=0ABcc:_x@evil?=` would turn into a line break inside a header. Encoded-words
are therefore decoded (and flattened) here first, and every built message is parsed back and
checked before it is returned.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import datetime
from email import message_from_bytes
from email import policy as email_policy
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from urllib.parse import quote

from service.core import tokens as tk
from service.core.model import Person, names_of  # noqa: F401  (names_of re-exported)

_FORBIDDEN = re.compile(r"[\r\n\x00]")
_NAME_JUNK = re.compile(r"[\x00-\x1f\x7f]+")


class HeaderInjection(ValueError):
    """A header value contained CR, LF or NUL."""


def safe(value: str, field: str) -> str:
    """`value` unchanged, or HeaderInjection if it could start a new header line."""
    if _FORBIDDEN.search(value):
        raise HeaderInjection(f"{field} contains a line break or NUL; refusing to send")
    return value


_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")


def header_text(value: str) -> str:
    """`value` made safe for any header: encoded-words decoded (a few rounds, for nested
    ones), control characters turned into spaces, whitespace collapsed, and whatever still
    looks like an encoded-word broken up so the email package cannot decode it again."""
    text = value or ""
    for _ in range(3):
        if not _ENCODED_WORD.search(text):
            break
        try:
            text = str(make_header(decode_header(text)))
        except (HeaderParseError, LookupError, UnicodeError, ValueError):
            break
    text = " ".join(_NAME_JUNK.sub(" ", text).split())
    return text.replace("=?", "= ?")


def clean_name(name: str) -> str:
    """A display name safe for a header (see `header_text`)."""
    return header_text(name)


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
    msg["Subject"] = header_text(safe(subject, "Subject"))
    msg["Date"] = format_datetime(env.date)
    msg["Message-ID"] = safe(f"<{env.message_id}>", "Message-ID")
    if env.reply_to:
        msg["Reply-To"] = safe(env.reply_to, "Reply-To")
    in_reply_to = _thread_id(env.in_reply_to)
    refs = [r for r in map(_thread_id, env.references) if r and r != in_reply_to]
    if in_reply_to:
        msg["In-Reply-To"] = safe(f"<{in_reply_to}>", "In-Reply-To")
        refs.append(in_reply_to)
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
    _check(msg, env)
    return msg


_SANE_ID = re.compile(r"^[!#-;=?-~]{1,250}$")  # printable ASCII without <, >, space


def _thread_id(message_id: str | None) -> str | None:
    """A Message-ID to thread under, or None when it is not one we can repeat safely.

    The intro's Message-ID comes from whoever wrote it: one with spaces, brackets or an
    encoded-word (which the email package would decode into a line break) is left out.
    """
    if not message_id:
        return None
    value = message_id.strip().strip("<>")
    if not _SANE_ID.match(value) or "=?" in value:
        return None
    return value


def _check(msg: EmailMessage, env: Envelope) -> None:
    """Parse the serialized message back: exactly our recipient and sender, no extra headers.

    The last line of defence against header injection through some path nobody thought of:
    better no message than one with a Bcc an attacker chose.
    """
    raw = msg.as_bytes(policy=email_policy.SMTP)
    head = raw.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n"):
        if not (line[:1] in (b" ", b"\t") or b":" in line):
            raise HeaderInjection("a header line without a name; refusing to send")
    back = message_from_bytes(raw, policy=email_policy.default)
    names = [k.lower() for k in back]
    if any(n in names for n in ("bcc", "cc", "resent-to", "resent-bcc")) or len(names) != len(
            {k.lower() for k in msg}) or len(names) != len(set(names)):
        raise HeaderInjection("the message grew a header it should not have; refusing to send")
    for field, person in (("To", env.to), ("From", env.sender)):
        addrs = [a.addr_spec.lower() for a in back[field].addresses]
        if addrs != [person.email.lower()]:
            raise HeaderInjection(f"{field} would go to {addrs}, not {person.email}; refusing")


def mailto(address_: str, subject: str, body: str = "") -> str:
    """A mailto: URL with a prefilled subject and body (for one-click answers)."""
    url = f"mailto:{address_}?subject={quote(subject)}"
    if body:
        url += f"&body={quote(body)}"
    return url


# ------------------------------------------------------------------ people, as templates see them

# Templates see people as `Addressee`s: a Person whose name went through `addressee()`.
Addressee = Person


def addressee(person: Person) -> Addressee:
    """`person` for the templates: control characters gone, address-like names dropped."""
    name = clean_name(person.name).strip("'\" ")
    if "@" in name:
        # "bob@acme.example" <bob@acme.example>, or "'bob@x' via Group": no real name here
        name = ""
    return Addressee(person.email, name)


# ------------------------------------------------------------------ one-click answers


@dataclass(frozen=True, slots=True)
class Choice:
    """One one-click answer: a plus-address carrying the party's signed token and the answer.

    HTML shows `url` (a mailto: link with a ready subject and text); plain text shows
    `address`, which is short enough to read and copy.
    """

    kind: str  # positive | negative | pending | optout
    label: str
    address: str
    url: str
    body: str = ""  # the text the mailto: link prefills


_CHOICES = (
    ("p", "It went well", "It went well with {who}."),
    ("n", "Not a fit", "It did not work out with {who}."),
    ("w", "Not yet", "We have not connected yet with {who}."),
    ("s", "Stop asking me", "Please stop sending me these check-ins."),
)


def answer_choices(secret: bytes, service_address: str, party_id: int,
                   who: str) -> tuple[Choice, ...]:
    """The four one-click answers for party `party_id`; `who` names the other side."""
    out = []
    for letter, label, body in _CHOICES:
        addr = tk.plus_address(service_address, tk.make_token(secret, party_id, letter))
        kind = tk.ANSWER_KINDS[letter].value
        text = body.format(who=who or "them")
        out.append(Choice(kind, label, addr, mailto(addr, label, text), text))
    return tuple(out)


# Headers a DKIM signature covers: what a forger would want to change. List-Unsubscribe and
# List-Unsubscribe-Post must be signed for one-click unsubscribe to be trusted (RFC 8058 §4).
DKIM_HEADERS = (
    "From", "To", "Subject", "Date", "Message-ID", "Reply-To", "In-Reply-To", "References",
    "List-Unsubscribe", "List-Unsubscribe-Post", "Auto-Submitted", "MIME-Version",
    "Content-Type",
)
