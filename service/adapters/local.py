"""The embedded default transport: a local Maildir for inbound mail, .eml files for outbound.

With these, `introloop demo` (and a trial run) needs no mail account: drop .eml files into
`<data>/maildir/new/` and read what the service sent in `<data>/outgoing/`.
"""

from __future__ import annotations

import mailbox
import re
import time
from collections.abc import Iterator
from pathlib import Path

from service.ports import RawMail


class MaildirMailbox:
    """Inbound mail from a local Maildir. Processed messages move from new/ to cur/ (flag S)."""

    def __init__(self, path: Path, name: str = "local"):
        self.path = Path(path)
        self.name = name
        self._md = mailbox.Maildir(str(self.path), create=True)

    def uidvalidity(self) -> int | None:
        """Maildir keys are not UIDs; deduplication relies on content hashes instead."""
        return None

    def fetch_new(self, after_uid: int | None = None) -> Iterator[RawMail]:
        """Every message still in new/, oldest first."""
        new_dir = self.path / "new"
        files = sorted(new_dir.iterdir(), key=lambda p: (p.stat().st_mtime, p.name)) \
            if new_dir.is_dir() else []
        for f in files:
            if f.name.startswith("."):
                continue
            yield RawMail(data=f.read_bytes(), mailbox=self.name, folder="INBOX", ref=f.name)

    def mark_done(self, mail: RawMail) -> None:
        """Move the file to cur/ with the Seen flag, the Maildir way of saying 'read'."""
        if mail.ref is None:
            return
        src = self.path / "new" / mail.ref
        if src.exists():
            src.rename(self.path / "cur" / f"{mail.ref}:2,S")

    def deliver(self, raw: bytes) -> str:
        """Drop a message into new/ (what an MTA would do); returns its key."""
        return self._md.add(raw)

    def wait(self, timeout: float) -> bool:
        """No push notifications for a directory here: sleep and let the caller poll."""
        time.sleep(timeout)
        return False

    def close(self) -> None:
        """Nothing to release."""


class FileSender:
    """Outbound mail written as .eml files, one folder per recipient."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def send(self, raw: bytes, mail_from: str, rcpt_to: list[str], message_id: str) -> None:
        """Write `raw` once per recipient; the file name derives from the Message-ID."""
        for rcpt in rcpt_to:
            folder = self.directory / _safe(rcpt)
            folder.mkdir(parents=True, exist_ok=True)
            name = _safe(message_id.split("@")[0]) + ".eml"
            tmp = folder / ("." + name)
            tmp.write_bytes(raw)
            tmp.replace(folder / name)  # atomic: a reader never sees half a message

    def close(self) -> None:
        """Nothing to release."""


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9@._+-]", "_", text)[:200]
