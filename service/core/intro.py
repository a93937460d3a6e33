"""Is this message an introduction, and between whom? Pure: no I/O, never raises.

An intro is written by an authorised member to two or more people with the service in Bcc (or,
less often, Cc). The referrer is the member who sent it; the parties are everyone in To/Cc
except the referrer, the referrer's own other addresses (aliases, including a colleague the
operator registered as one), and any of the service's addresses. Bcc is never a source of
parties: a sent copy may show `Bcc: referrals@…` and whoever else was blind-copied, and those
people were not introduced to anyone.

Forwarded intros: when the message itself addresses nobody but the service (the member
forgot to BCC and forwards their sent intro), the people of the forwarded message count:
its From (unless it is the member), To and Cc. The forwarded message is found as a
`message/rfc822` attachment or, inline, as the header block clients write above the quoted
original ("---------- Forwarded message ---------", Outlook's "From: … Sent: … To: …",
Apple Mail's "Begin forwarded message:", in the common languages).

Everything here is a rule with a one-line reason, so `introloop inspect` can say why.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from email.header import decode_header
from email.message import EmailMessage, Message
from email.utils import getaddresses

from service.core import headers as h
from service.core.body import decode_bytes, text_body
from service.core.gateway import strip_subject_tags
from service.core.model import Kind, Person

# A message addressed to more people than this is a mailing (an invitation, a newsletter sent
# by hand, spam), not an introduction: asking each of them "how did the intro go?" would be
# exactly the mail to strangers the service must never send. Real group intros have 3-5.
MAX_PARTIES = 8

# The same intro text from the same member to the same people within this window is one
# intro sent twice (BCC'd again, re-sent from a phone); the same words weeks later are a
# genuinely new introduction and get their own referral.
DUPLICATE_WINDOW = timedelta(days=7)

_MAX_SCAN_CHARS = 100_000  # inline-forward search: a header block is near the top
_MAX_BLOCK_LINES = 30


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
        return frozenset({self.email.lower(), *(a.lower() for a in self.aliases)})


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
    """What capture concluded. `kind` is INTRO, IGNORED or REJECTED; `reason` is one line.

    `intro_message_id` is the Message-ID the parties know the intro by: the forwarded
    original's when there is one, else the message's own. `body_digest` identifies the intro's
    text (whitespace and case folded), so a second copy sent minutes later is recognised.
    `references` are the ids the message replies to (a follow-up in an intro's thread).
    `via` says where the parties came from: headers, attached (message/rfc822) or inline.
    """

    kind: Kind
    reason: str
    referrer: Person | None = None
    parties: tuple[Person, ...] = ()
    subject: str = ""
    forwarded: bool = False
    intro_message_id: str | None = None
    body_digest: str = ""
    references: tuple[str, ...] = ()
    via: str = "headers"
    # set when a member meant an intro but *how* it was sent keeps it from counting: one
    # line telling them what to do instead (they get it in a short, rate-limited note)
    advice: str = ""


def is_service_address(address: str, service_addresses: Collection[str]) -> bool:
    """True for the service address itself and any of its plus-addresses."""
    local, _, domain = address.lower().partition("@")
    base = local.split("+", 1)[0]
    for own in service_addresses:
        o_local, _, o_domain = own.lower().partition("@")
        if domain == o_domain and base == o_local:
            return True
    return False


def _is_digest(msg: Message) -> bool:
    """A multipart/digest bundles many messages (a list digest): it forwards no intro."""
    try:
        return msg.get_content_type() == "multipart/digest"
    except Exception:
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


# --- inline forwards -------------------------------------------------------------------------

# Header names of forwarded/quoted header blocks, as mail clients write them in the languages
# members use (English, German, French, Spanish, Italian, Dutch, Portuguese, Nordic, Japanese,
# Chinese). Matching is on the whole key, so "A:" (Spanish/Italian To) cannot match inside text.
_KEYS: dict[str, str] = {}
for _canon, _words in {
    "from": "from von de van da från fra od 差出人 送信者 发件人 寄件者",
    "to": "to an à a aan para till til 宛先 收件人",
    "cc": "cc kopie copie cópia kopia 抄送 副本",
    "date": "date sent gesendet datum envoyé enviado enviada verzonden inviato data skickat "
            "sendt lähetetty 日付 送信日時 发送时间 日期 时间 發送時間",
    "subject": "subject betreff objet asunto oggetto onderwerp assunto ämne emne aihe 件名 主题 "
               "主旨",
}.items():
    for _w in _words.split():
        _KEYS[_w] = _canon
# multi-word keys
_KEYS.update({"enviada em": "date", "enviado em": "date", "sent at": "date",
              "reply to": "", "reply-to": "", "antwort an": "", "répondre à": ""})

_KEY_LINE = re.compile(
    r"^[\s>]*\*{0,2}(?P<key>[^\W\d_][^\W\d_ .'-]*(?:[ -][^\W\d_]+)?)\*{0,2}\s*[:：]\s*\*{0,2}"
    r"\s*(?P<value>.*?)\s*$"
)
_MARKER = re.compile(
    r"^[\s>]*(?:-{2,}\s*.{0,40}?(?:forward|original|weitergeleitet|ursprüngliche|transféré|"
    r"d'origine|reenviado|inoltrato|doorgestuurd|oorspronkelijk|encaminhada|vidarebefordrat|"
    r"videresendt|転送|转发)\S*.{0,40}?-{2,}|begin forwarded message\s*:?|"
    r"anfang der weitergeleiteten nachricht\s*:?|début du message (?:réexpédié|transféré)\s*:?|"
    r"_{10,})\s*$",
    re.IGNORECASE,
)
_ADDR = re.compile(r"[^\s<>()\[\]\"',;:]+@[^\s<>()\[\]\"',;:]+\.[^\s<>()\[\]\"',;:]+")


@dataclass(frozen=True, slots=True)
class InlineForward:
    """The header block of a forwarded message found in the body text."""

    sender: Person | None
    to: tuple[Person, ...]
    cc: tuple[Person, ...]
    nameless: tuple[str, ...]  # recipients written without an address (Outlook, Exchange)
    subject: str = ""
    sender_name: str = ""  # the From as written when it has no address ("From: Alice Martin")

    @property
    def people(self) -> list[Person]:
        """From, To and Cc, in that order."""
        return ([self.sender] if self.sender else []) + list(self.to) + list(self.cc)


def _key_value(line: str) -> tuple[str, str] | None:
    m = _KEY_LINE.match(line)
    if not m:
        return None
    key = m.group("key").strip().lower()
    canon = _KEYS.get(key)
    if canon is None:
        return None
    return canon, m.group("value").replace("*", " ").strip()


def _valid_address(address: str) -> bool:
    local, _, domain = address.rpartition("@")
    return bool(local) and "." in domain and " " not in address and len(address) <= 320


def _clean(name: str) -> str:
    name = re.sub(r"[\x00-\x1f\x7f]+", " ", name or "")
    return re.sub(r"\s+", " ", name.strip().strip("\"'").strip()).strip()


def people_in(value: str) -> tuple[list[Person], list[str]]:
    """Addresses (with names) in a header value as a forwarded block writes it, plus the
    recipients written as a bare name. Handles Outlook's `;` separators and `Last, First`
    names, and the `<mailto:…>` / `[mailto:…]` leftovers of HTML-to-text conversion."""
    value = re.sub(r"<mailto:[^<>\s]*>", "", value, flags=re.IGNORECASE)
    value = re.sub(r"[\[(]mailto:([^\])\s]+)[\])]", r"<\1>", value, flags=re.IGNORECASE)
    value = re.sub(r"(?i)\bmailto:", "", value)
    people: list[Person] = []
    nameless: list[str] = []
    chunks = value.split(";") if ";" in value else [value]
    for chunk in chunks:
        if not chunk.strip():
            continue
        if ";" in value:
            # one recipient per chunk: a comma belongs to the name ("Chen, Bob <bob@…>")
            m = re.search(r"<\s*([^<>\s]+@[^<>\s]+)\s*>", chunk)
            if m:
                pairs = [(chunk[: m.start()], m.group(1))]
            else:
                bare = _ADDR.search(chunk)
                pairs = [("", bare.group(0))] if bare else [(chunk, "")]
        else:
            pairs = getaddresses([chunk])
            if not any("@" in a for _, a in pairs):
                pairs = [(chunk, "")]
        for name, address in pairs:
            address = address.strip().strip("<>").lower()
            if address and _valid_address(address):
                people.append(Person(address, _clean(name)))
            elif _clean(name) and "@" not in name:
                nameless.extend(n for n in (_clean(x) for x in name.split(",")) if n)
    return people, nameless


def forwarded_inline(text: str) -> InlineForward | None:
    """The first forwarded-message header block in `text` with a From or a marker line, a To,
    and a Date or Subject; None when there is none. Quoting (`> `) and `*bold*` keys are ok."""
    lines = text[:_MAX_SCAN_CHARS].splitlines()
    after_marker = False
    for i, line in enumerate(lines):
        if _MARKER.match(line):
            after_marker = True
            continue
        kv = _key_value(line)
        if kv is None:
            if line.strip():
                after_marker = False
            continue
        if kv[0] != "from" and not after_marker:
            continue
        fields = _read_block(lines, i)
        after_marker = False
        if fields.get("to") and ("date" in fields or "subject" in fields):
            sender_people, _ = people_in(fields.get("from", ""))
            to, to_nameless = people_in(fields["to"])
            cc, cc_nameless = people_in(fields.get("cc", ""))
            return InlineForward(
                sender=sender_people[0] if sender_people else None,
                to=tuple(to),
                cc=tuple(cc),
                nameless=tuple(to_nameless + cc_nameless),
                subject=fields.get("subject", ""),
                sender_name="" if sender_people else _clean(fields.get("from", "")),
            )
    return None


def _read_block(lines: list[str], start: int) -> dict[str, str]:
    fields: dict[str, str] = {}
    last: str | None = None
    j = start
    while j < len(lines) and j < start + _MAX_BLOCK_LINES:
        line = lines[j]
        if not line.strip() or line.strip() == ">":
            # Apple Mail and some HTML conversions put blank lines between header lines
            k = j + 1
            while k < len(lines) and (not lines[k].strip() or lines[k].strip() == ">"):
                k += 1
            nxt = _key_value(lines[k]) if k < len(lines) else None
            if nxt is not None and nxt[0] and nxt[0] not in fields:
                j = k
                continue
            break
        kv = _key_value(line)
        if kv is not None:
            key, value = kv
            if key in fields:
                break  # the next block (a forward of a forward) starts here
            if key:
                fields[key] = value
            last = key
        elif last in ("to", "cc") and ("@" in line or line[:1].isspace() or ";" in line):
            fields[last] += " " + line.strip().lstrip(">").strip()  # a wrapped recipient list
        else:
            break
        j += 1
    return fields


# --- names -----------------------------------------------------------------------------------


def _repaired_names(msg: Message, names: tuple[str, ...]) -> dict[str, str]:
    """Display names re-decoded from the raw header when the parser left U+FFFD in them.

    An RFC 2047 word in a charset Python does not know (`=?x-bogus?q?Jos=E9?=`) comes out of
    the stdlib as "Jos\\ufffd"; `decode_bytes` makes a clean guess (UTF-8, then windows-1252).
    """
    out: dict[str, str] = {}
    try:
        items = list(msg.raw_items())  # type: ignore[attr-defined]
    except Exception:
        return out
    wanted = {n.lower() for n in names}
    for key, value in items:
        if key.lower() not in wanted or not isinstance(value, str):
            continue
        try:
            decoded = "".join(
                decode_bytes(part, charset) if isinstance(part, bytes) else part
                for part, charset in decode_header(value)
            )
        except Exception:
            continue
        for display, address in getaddresses([decoded]):
            address = address.strip().lower()
            if address and display and "\ufffd" not in display:
                out.setdefault(address, _clean(display))
    return out


def _fix_names(people: list[Person], msg: Message, names: tuple[str, ...]) -> list[Person]:
    if not any("\ufffd" in p.name for p in people):
        return people
    repaired = _repaired_names(msg, names)
    return [
        Person(p.email, repaired.get(p.email, p.name.replace("\ufffd", "").strip()))
        if "\ufffd" in p.name else p
        for p in people
    ]


def _subject(msg: Message) -> str:
    """The Subject, re-decoded cleanly when an unknown RFC 2047 charset left U+FFFD in it."""
    # a gateway's "[EXTERNAL]" is not part of the intro's subject (the requests quote it)
    subject = strip_subject_tags(h.header(msg, "Subject"))
    if "\ufffd" not in subject:
        return subject
    try:
        raw = next(v for k, v in msg.raw_items() if k.lower() == "subject")  # type: ignore[attr-defined]
        text = "".join(decode_bytes(part, charset) if isinstance(part, bytes) else part
                       for part, charset in decode_header(str(raw)))
        return strip_subject_tags(_clean(text)) or subject
    except Exception:
        return subject


def body_digest(text: str) -> str:
    """A fingerprint of an intro's text: the same words give the same digest, whatever the
    line breaks, case or MIME packaging. Used to recognise the same intro sent twice."""
    folded = " ".join(text.lower().split())
    return hashlib.sha256(folded.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def intro_key(referrer: str, parties: Collection[str], digest: str) -> str:
    """The dedupe key of an intro: who introduced whom with which words (64 hex chars)."""
    basis = "|".join([referrer.lower(), *sorted(p.lower() for p in parties), digest])
    return hashlib.sha256(basis.encode("utf-8", "surrogatepass")).hexdigest()


# --- the verdict -----------------------------------------------------------------------------


def parse_intro(
    msg: EmailMessage,
    *,
    service_addresses: Collection[str],
    senders: Senders,
) -> IntroVerdict:
    """Decide whether `msg` creates a referral, and with whom. Never raises."""
    try:
        return _parse_intro(msg, service_addresses, senders)
    except Exception as exc:  # a bug here must cost one message a clean verdict, not the loop
        return IntroVerdict(Kind.IGNORED, f"could not read the intro ({type(exc).__name__})",
                            subject=h.header(msg, "Subject"))


def _parse_intro(
    msg: EmailMessage, service_addresses: Collection[str], senders: Senders
) -> IntroVerdict:
    subject = _subject(msg)
    found = h.sender(msg)
    if found is None:
        return IntroVerdict(Kind.IGNORED, "no readable From address", subject=subject)
    referrer = _fix_names([found], msg, ("From",))[0]
    rule = senders.allowed(referrer.email)
    member = senders.member_for(referrer.email)
    if member is not None:
        # an alias writes as the member: the referral belongs to the member's main address
        referrer = Person(member.email.lower(), member.name or referrer.name)
    own = set(member.addresses) if member else {referrer.email}

    def keep(people: list[Person]) -> list[Person]:
        out: list[Person] = []
        for p in people:
            if p.email in own or is_service_address(p.email, service_addresses):
                continue
            if p.email not in {o.email for o in out}:
                out.append(p)
        return out

    parties = keep(_fix_names(h.addresses(msg, "To", "Cc"), msg, ("To", "Cc")))
    intro_mid = h.message_id(msg)
    text, _ = text_body(msg)
    via = "headers"
    nameless: tuple[str, ...] = ()
    involved = True  # the member took part in the forwarded message (see below)
    if not parties:
        # addressed to the service alone: a forward of an intro the member forgot to BCC
        original = None if _is_digest(msg) else forwarded_original(msg)
        if original is not None:
            via = "attached"
            people = h.addresses(original, "From", "To", "Cc")
            parties = keep(_fix_names(people, original, ("From", "To", "Cc")))
            intro_mid = h.message_id(original) or intro_mid
            involved = any(p.email in own for p in people)
            if isinstance(original, EmailMessage):
                text, _ = text_body(original)
        else:
            inline = forwarded_inline(text)
            if inline is not None:
                via, parties, nameless = "inline", keep(inline.people), inline.nameless
                names = {n.lower() for n in (referrer.name, found.name) if n}
                involved = any(p.email in own for p in inline.people) or (
                    inline.sender is None and inline.sender_name.lower() in names)
    where = {"headers": "", "attached": " in the attached message",
             "inline": " in the forwarded message"}[via]

    def verdict(kind: Kind, reason: str, people: list[Person] | None = None,
                advice: str = "") -> IntroVerdict:
        return IntroVerdict(
            kind, reason, referrer, tuple(people or ()), subject,
            forwarded=via != "headers", intro_message_id=intro_mid,
            body_digest=body_digest(text), references=tuple(h.references(msg)), via=via,
            advice=advice,
        )

    if rule is None:
        # the shape is still worked out, so `inspect` and the quarantine list can say that a
        # non-member tried to introduce people (a member to add?) rather than calling it a reply
        would_be = 2 <= len(parties) <= MAX_PARTIES
        return verdict(
            Kind.REJECTED,
            f"sender {referrer.email} is not a member and not in INTROLOOP_ALLOW_SENDERS"
            + (f"; its intro of {', '.join(p.email for p in parties)} was not recorded"
               if would_be else ""),
            parties if would_be else None,
        )
    if via != "headers" and not involved and parties:
        # a forward of mail the member neither sent nor was copied on (a digest, a newsletter,
        # someone else's thread): nothing says the member introduced these people
        return verdict(
            Kind.IGNORED,
            f"the forwarded message is not one {referrer.email} sent or was copied on",
            parties,
        )
    if not parties and nameless:
        return verdict(
            Kind.IGNORED,
            "the forwarded message names its recipients without addresses ("
            + ", ".join(nameless[:4]) + "); forward it as an attachment or BCC the "
            "service on the intro itself",
            advice="the forwarded intro shows the people's names but not their addresses. "
            "Forward it as an attachment, or put us in Bcc on the intro itself.",
        )
    if not parties:
        return verdict(Kind.IGNORED,
                       f"no one besides the sender and the service is addressed{where}")
    if len(parties) == 1:
        return verdict(
            Kind.IGNORED,
            f"only one other person ({parties[0].email}) is addressed{where}; "
            "an intro needs two",
            parties,
        )
    if len(parties) > MAX_PARTIES:
        return verdict(
            Kind.IGNORED,
            f"addressed to {len(parties)} people{where}: more than {MAX_PARTIES} reads as a "
            "mailing, not an introduction",
            advice=f"it was addressed to {len(parties)} people, and we only follow up "
            f"introductions of up to {MAX_PARTIES}. Send separate, smaller intros and put us "
            "in Bcc on each.",
        )
    shape = "group intro" if len(parties) > 2 else "intro"
    how = {"headers": "", "attached": " (forwarded as an attachment)",
           "inline": " (forwarded inline)"}[via]
    return verdict(
        Kind.INTRO,
        f"{shape}{how} by {referrer.email} ({rule}) between "
        + ", ".join(p.email for p in parties),
        parties,
    )


# --- the referrer's answer to a confirmation --------------------------------------------------

_CANCEL = re.compile(
    r"\b(cancel(?:l?ed|l?ing|lation)?|annul(?:er|ez|é|ee|ée)|stornier(?:en|t|e)?|abbrechen|"
    r"cancelar|cancela|cancele|annulla(?:re|te)?|annuleer|annuleren)\b",
    re.IGNORECASE,
)
_NEGATED = re.compile(
    r"\b(don'?t|do not|did not|didn't|not|no need to|never|nicht|kein|pas|ne|no)\s+"
    r"(?:\w+\s+){0,2}$",
    re.IGNORECASE,
)


def asks_to_cancel(text: str) -> bool:
    """True when a referrer's reply says "cancel" (or annuler / stornieren / cancelar /
    annulla / annuleren) in its first two lines, not negated ("don't cancel")."""
    # the first two lines: "cancel", "Hi, please cancel - wrong Bob". A word further down a
    # long message is talk, not a command.
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()][:2]
    head = " ".join(lines)[:200]
    return any(not _NEGATED.search(head[: m.start()]) for m in _CANCEL.finditer(head))
