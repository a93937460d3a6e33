"""The seams between the loop and the outside world. Adapters implement these Protocols."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class RawMail:
    """One message as the mailbox holds it, before anything is decided about it."""

    data: bytes
    mailbox: str
    folder: str
    uidvalidity: int | None = None
    uid: int | None = None
    ref: str | None = None  # transport-specific handle (a Maildir key)


@runtime_checkable
class Mailbox(Protocol):
    """Where inbound mail comes from (IMAP, or a local Maildir for the embedded default)."""

    name: str

    def fetch_new(self, after_uid: int | None) -> Iterator[RawMail]:
        """Yield messages not yet handed out, oldest first, without marking them."""
        ...

    def uidvalidity(self) -> int | None:
        """The folder's UIDVALIDITY (None for transports without UIDs)."""
        ...

    def mark_done(self, mail: RawMail) -> None:
        """Mark a message as processed on the server. Called only after its bytes are stored."""
        ...

    def wait(self, timeout: float) -> bool:
        """Block until new mail may have arrived (IDLE) or `timeout` passes; True if woken."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


class TemporaryFailure(Exception):
    """Sending failed in a way worth retrying (4xx, connection trouble)."""


class ServerUnreachable(TemporaryFailure):
    """The server could not be reached at all: no point trying the other queued messages now."""


class MaybeSent(TemporaryFailure):
    """The connection broke after the whole message was handed over: the server may have
    accepted it. Check the Sent folder before sending it again."""


class PermanentFailure(Exception):
    """The server refused the message for good (5xx); the text is its answer."""


@runtime_checkable
class Sender(Protocol):
    """Where outbound mail goes (SMTP, or .eml files for the embedded default)."""

    def send(self, raw: bytes, mail_from: str, rcpt_to: list[str], message_id: str) -> None:
        """Deliver `raw` or raise TemporaryFailure / PermanentFailure."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


@runtime_checkable
class Clock(Protocol):
    """The only source of time outside tests' control."""

    def now(self) -> datetime:
        """Aware UTC now."""
        ...
