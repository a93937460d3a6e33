"""Signed reply tokens carried in plus-addresses: `referrals+<token>@network.example`.

A token names a record and what the address means, and carries an HMAC so a forged or altered
token matches nothing. Only `[a-z0-9-]` is used: some servers lowercase local parts, and
Gmail ignores dots in them.

    <id><kind><sig>          kind: x = plain reply to a feedback request (id = party)
                                   p / n / w / s = one-click answer: positive / negative /
                                   not yet / stop (id = party)
                                   u = operator's verdict on an unclear reply (id = reply)
                                   c = referrer's cancel of a referral (id = referral)
                                   r = "that is not what I meant": undo an opt-out read
                                       from a reply (id = reply), within UNDO_WINDOW
    bounce-<id>-<sig>        VERP envelope sender of outbox row <id>
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass

from service.core.model import Outcome

KINDS = "xpnwsucr"
ANSWER_KINDS: dict[str, Outcome] = {
    "p": Outcome.POSITIVE,
    "n": Outcome.NEGATIVE,
    "w": Outcome.PENDING,
    "s": Outcome.OPTOUT,
}
KIND_FOR_ANSWER = {v: k for k, v in ANSWER_KINDS.items()}
_SIG_LEN = 10
_TOKEN = re.compile(rf"^(\d{{1,12}})([{KINDS}])([a-z2-7]{{{_SIG_LEN}}})$")
_BOUNCE = re.compile(rf"^bounce-(\d{{1,12}})-([a-z2-7]{{{_SIG_LEN}}})$")


@dataclass(frozen=True, slots=True)
class Token:
    """A verified token: which record it names and what kind of address it was."""

    id: int
    kind: str

    @property
    def answer(self) -> Outcome | None:
        """The one-click answer the address stands for, if any."""
        return ANSWER_KINDS.get(self.kind)


def _sig(secret: bytes, message: str) -> str:
    digest = hmac.new(secret, message.encode(), hashlib.sha256).digest()
    return base64.b32encode(digest).decode().lower()[:_SIG_LEN]


def make_token(secret: bytes, record_id: int, kind: str = "x") -> str:
    """The token for record `record_id` with meaning `kind` (see module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"unknown token kind {kind!r}")
    return f"{record_id}{kind}{_sig(secret, f'{kind}:{record_id}')}"


def read_token(secret: bytes, token: str) -> Token | None:
    """The Token if `token` is well-formed and correctly signed, else None."""
    m = _TOKEN.match(token.strip().lower())
    if not m:
        return None
    record_id, kind, sig = int(m.group(1)), m.group(2), m.group(3)
    if not hmac.compare_digest(sig, _sig(secret, f"{kind}:{record_id}")):
        return None
    return Token(record_id, kind)


def plus_address(service_address: str, tag: str) -> str:
    """`referrals@x` + tag -> `referrals+tag@x`."""
    local, _, domain = service_address.partition("@")
    return f"{local}+{tag}@{domain}"


def tag_of(address: str, service_address: str) -> str | None:
    """The plus-tag of `address` when it is the service address with a tag, else None."""
    local, _, domain = address.lower().partition("@")
    s_local, _, s_domain = service_address.lower().partition("@")
    if domain != s_domain or "+" not in local:
        return None
    base, _, tag = local.partition("+")
    return tag if base == s_local and tag else None


def tokens_in(recipients: list[str], service_address: str, secret: bytes) -> list[Token]:
    """Every valid token among the delivery recipients, in header order."""
    out: list[Token] = []
    for address in recipients:
        tag = tag_of(address, service_address)
        token = read_token(secret, tag) if tag else None
        if token and token not in out:
            out.append(token)
    return out


def bounce_tag(secret: bytes, outbox_id: int) -> str:
    """Plus-tag of the VERP envelope sender for outbox row `outbox_id`."""
    return f"bounce-{outbox_id}-{_sig(secret, f'bounce:{outbox_id}')}"


def read_bounce_tag(secret: bytes, tag: str) -> int | None:
    """The outbox id named by a VERP tag, if correctly signed."""
    m = _BOUNCE.match(tag.strip().lower())
    if not m:
        return None
    outbox_id = int(m.group(1))
    if not hmac.compare_digest(m.group(2), _sig(secret, f"bounce:{outbox_id}")):
        return None
    return outbox_id
