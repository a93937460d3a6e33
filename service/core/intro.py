"""Is this message an introduction, and between whom?

An intro is written by an authorised member to two or more people with the service in Bcc (or,
less often, Cc). The referrer is the member who sent it; the parties are everyone in To/Cc
except the referrer, the referrer's own other addresses, and any of the service's addresses.
Forwarded intros (`Fwd:`) count the people of the forwarded message.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage, Message

from service.core import headers as h
from service.core.model import Kind, Person

_FWD_SUBJECT = re.compile(r"^\s*(fwd?|wg|tr|rv|doorst|i)\s*:", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Member:
    """A member of the network, as the core needs to know them."""

    email: str
    name: str = ""
    aliases: tuple[str, ...] = ()
    timezone: str | None = None

    @property
    def addresses(self) -> frozenset[str]:
        """The member's own address and every alias, lowercased."""
        return frozenset({self.email, *self.aliases})


@dataclass(frozen=True, slots=True)
class Senders:
    """Who may create referrals: the members (by every address) and INTROLOOP_ALLOW_SENDERS."""

    members: Mapping[str, Member] = field(default_factory=dict)  # any address -> member
    allow: tuple[str, ...] = ()

    @classmethod
    def build(cls, members: Collection[Member], allow: Collection[str] = ()) -> Senders:
        """Index members by each of their addresses."""
        index: dict[str, Member] = {}
        for member in members:
            for address in member.addresses:
                index[address] = member
        return cls(index, tuple(a.lower() for a in allow))

    def member_for(self, address: str) -> Member | None:
        """The member an address belongs to (own address or alias)."""
        return self.members.get(address.lower())

    def allowed(self, address: str) -> str | None:
        """Why `address` may create referrals (a rule name), or None when it may not."""
        address = address.lower()
        if address in self.members:
            return "member"
        domain = "@" + address.rpartition("@")[2]
        for rule in self.allow:
            if rule == "*":
                return "allow:*"
            if rule in (address, domain):
                return f"allow:{rule}"
        return None


@dataclass(frozen=True, slots=True)
class IntroVerdict:
    """What capture concluded. `kind` is INTRO, IGNORED or REJECTED; `reason` is one line."""

    kind: Kind
    reason: str
    referrer: Person | None = None
    parties: tuple[Person, ...] = ()
    subject: str = ""
    forwarded: bool = False


def is_service_address(address: str, service_addresses: Collection[str]) -> bool:
    """True for the service address itself and any of its plus-addresses."""
    local, _, domain = address.lower().partition("@")
    base = local.split("+", 1)[0]
    for own in service_addresses:
        o_local, _, o_domain = own.lower().partition("@")
        if domain == o_domain and base == o_local:
            return True
    return False


def forwarded_original(msg: EmailMessage) -> Message | None:
    """The forwarded message when `msg` forwards one as a message/rfc822 attachment."""
    try:
        for part in msg.walk():
            if part.get_content_type() == "message/rfc822":
                payload = part.get_payload()
                if isinstance(payload, list) and payload:
                    return payload[0]  # type: ignore[no-any-return]
    except Exception:
        return None
    return None


def parse_intro(
    msg: EmailMessage,
    *,
    service_addresses: Collection[str],
    senders: Senders,
) -> IntroVerdict:
    """Decide whether `msg` creates a referral, and with whom. Never raises."""
    subject = h.header(msg, "Subject")
    referrer = h.sender(msg)
    if referrer is None:
        return IntroVerdict(Kind.IGNORED, "no readable From address", subject=subject)
    rule = senders.allowed(referrer.email)
    if rule is None:
        return IntroVerdict(
            Kind.REJECTED,
            f"sender {referrer.email} is not a member and not in INTROLOOP_ALLOW_SENDERS",
            referrer=referrer,
            subject=subject,
        )
    member = senders.member_for(referrer.email)
    if member is not None:
        # an alias writes as the member: the referral belongs to the member's main address
        referrer = Person(member.email, member.name or referrer.name)
    own = set(member.addresses) if member else {referrer.email}

    source: Message = msg
    forwarded = False
    original = forwarded_original(msg) if _FWD_SUBJECT.match(subject) else None
    if original is not None:
        source, forwarded = original, True
    candidates = h.addresses(source, "To", "Cc")
    if forwarded:
        # the forwarded message's own sender was one side of the intro unless it is the member
        candidates = h.addresses(source, "From") + candidates
    parties = tuple(
        p
        for p in candidates
        if p.email not in own and not is_service_address(p.email, service_addresses)
    )
    if not parties:
        return IntroVerdict(
            Kind.IGNORED, "no one besides the sender and the service is addressed", referrer,
            subject=subject,
        )
    if len(parties) == 1:
        return IntroVerdict(
            Kind.IGNORED,
            f"only one other person ({parties[0].email}) is addressed; an intro needs two",
            referrer,
            parties,
            subject,
        )
    shape = "group intro" if len(parties) > 2 else "intro"
    via = " (forwarded)" if forwarded else ""
    return IntroVerdict(
        Kind.INTRO,
        f"{shape}{via} by {referrer.email} ({rule}) between "
        + ", ".join(p.email for p in parties),
        referrer,
        parties,
        subject,
        forwarded,
    )
