"""DKIM signing of outgoing mail (dkimpy), when INTROLOOP_DKIM_SELECTOR and _KEY_FILE are set.

Many providers sign submitted mail themselves; this is for operators who send through a relay
that does not, with the public key published at `<selector>._domainkey.<domain>`. The
signature covers the exact bytes handed to SMTP (the outbox stores them signed), with relaxed
canonicalization for headers and body so relays that re-wrap lines do not break it.
"""

from __future__ import annotations

from pathlib import Path

import dkim

from service.config import ConfigError
from service.core.outgoing import DKIM_HEADERS


class DkimSigner:
    """Signs messages for one domain with one selector and an RSA private key (PEM)."""

    def __init__(self, selector: str, domain: str, private_key: bytes):
        self.selector, self.domain = selector, domain
        self._key = private_key

    @classmethod
    def from_file(cls, selector: str, domain: str, key_file: Path) -> DkimSigner:
        """Load a PEM private key; ConfigError (one line) when it is unreadable or not a key."""
        try:
            key = Path(key_file).read_bytes()
        except OSError as exc:
            raise ConfigError([f"INTROLOOP_DKIM_KEY_FILE {key_file} cannot be read: "
                               f"{exc.strerror}"]) from None
        signer = cls(selector, domain, key)
        try:
            signer.sign(b"From: a@b.example\r\nTo: c@d.example\r\nSubject: t\r\n\r\nt\r\n")
        except Exception as exc:
            raise ConfigError([f"INTROLOOP_DKIM_KEY_FILE {key_file} is not a usable private "
                               f"key ({type(exc).__name__}); create one with: openssl genrsa "
                               "-out dkim.pem 2048"]) from None
        return signer

    def __call__(self, raw: bytes) -> bytes:
        """The signed message (see `sign`)."""
        return self.sign(raw)

    def sign(self, raw: bytes) -> bytes:
        """`raw` with a DKIM-Signature header prepended, covering the headers it has."""
        head = raw.split(b"\r\n\r\n", 1)[0].lower()
        present = [h.encode() for h in DKIM_HEADERS
                   if head.startswith(h.lower().encode() + b":")
                   or b"\r\n" + h.lower().encode() + b":" in head]
        signature = dkim.sign(
            raw, self.selector.encode(), self.domain.encode(), self._key,
            canonicalize=(b"relaxed", b"relaxed"), signature_algorithm=b"rsa-sha256",
            include_headers=present,
        )
        return signature + raw

