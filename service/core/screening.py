"""The automatic-mail screen: bounces, auto-replies, list mail and our own loops.

Every inbound message passes here before anything tries to read it as an intro or an
answer. ``screen()`` returns ``None`` for mail that looks written by a person, otherwise
a :class:`~service.core.model.Screening` that says what it is and which rule decided.

Rules run in a fixed order, like Mailman's pipeline: the first rule whose evidence is
AUTOMATIC wins. A rule that only gives LIST or HINT evidence (see
:class:`~service.core.model.Evidence`) is kept while the later rules run, because a
later rule may still prove the mail automatic; the strongest verdict is returned. What
a LIST or HINT verdict means for a reply or an intro is decided by the reader's
evidence table (service/core/reader.py), not here: a hint never outranks a reply token.

====  ====================  =========  =========  =========================================
 #    rule                  kind       evidence   decides on
====  ====================  =========  =========  =========================================
 1    loop                  IGNORED    automatic  our own mail coming back: ``X-Introloop-
                                                  Loop``, From one of ``own_addresses``, or a
                                                  Message-ID we minted for ``own_domain``
 2    arf                   IGNORED    automatic  complaint reports: RFC 5965, Hotmail JMRP,
                                                  Amazon SES "Complaint" JSON
 3    unsubscribe           (pass)     --         Apple Mail / RFC 2369 unsubscribe requests:
                                                  marked Auto-Submitted, but the person's own
                                                  opt-out, so ``screen()`` stops here
 4    mdn                   IGNORED    automatic  read receipts (RFC 8098); BOUNCE when the
                                                  disposition is a rejection (Sieve "deleted")
 5    challenge             AUTOREPLY  automatic  challenge-response / "add me to your allowed
                                                  list" notices (Boxbe wraps these in a DSN)
 6    dsn                   BOUNCE     automatic  RFC 3464/6533 delivery-status fields (failed
                                                  or delayed); IGNORED when all succeeded
 7    ses                   BOUNCE     automatic  Amazon SES "Bounce" JSON
 8    x-failed-recipients   BOUNCE     automatic  Exim's ``X-Failed-Recipients`` header
 9    flufl                 BOUNCE     automatic  flufl.bounce detectors, only on mail that
                                                  already looks like a report
 10   ndr-text              BOUNCE     automatic  report look + failure wording
 11   auto-submitted        AUTOREPLY  automatic  RFC 3834 ``Auto-Submitted`` other than ``no``
 12   autoreply-header      AUTOREPLY  automatic  ``X-Autoreply``, ``X-Autorespond(er)``,
                                                  ``Precedence: auto_reply``, vacation X-Mailer
 13   autoreply-subject     AUTOREPLY  automatic  localised "Automatic reply:", "Out of
                                                  Office", "Abwesenheitsnotiz", "[Ticket #1]"
 14   autoreply-body        AUTOREPLY  automatic  a short new text that says it is automatic or
                                                  opens like an out-of-office, with support
                                                  ("for urgent matters…") and no intro words
 15   autoreply-weak        AUTOREPLY  hint /     two weak signals; only headers
                                       automatic  (``X-Auto-Response-Suppress`` + ``Precedence``)
                                                  are a hint, an ack subject or out-of-office
                                                  words with one of them are automatic
 16   verp                  BOUNCE     automatic  anything else sent to our VERP address
 17   null-sender           AUTOREPLY  automatic  ``Return-Path: <>``: only automatic mail
 18   list                  IGNORED    list       ``List-Id``/``List-Post``/list-server headers
 19   bulk-hint             IGNORED    hint       ``Precedence: bulk|list|junk``,
                                                  ``Feedback-ID``, ``List-Unsubscribe`` (all
                                                  also stamped on personal mail)
 20   noreply-sender        IGNORED    automatic  From ``noreply``/``donotreply``/
                                                  ``mailer-daemon``/``postmaster``
====  ====================  =========  =========  =========================================

Why this order: our own mail carries ``Auto-Submitted`` and ``List-Unsubscribe``, so the
loop rule is first. Bounces usually carry ``Auto-Submitted`` too and come from
``mailer-daemon``, so the bounce rules (6–10) come before the auto-reply rules (11–17),
and both before the catch-all "ignored" rules (18–20). Auto-replies often carry
``Precedence: bulk`` or ``junk``, so list rules come after them. Complaints, receipts
and challenges are multipart reports too, so they are sorted out before ``dsn``.

Bounces: ``failed`` holds the failed recipients, lowercased. DSN fields are trusted
first (Original-Recipient, else Final-Recipient), flufl.bounce's heuristics second,
because those can pick addresses out of the quoted original. ``permanent`` is True for
5.x.x failures and False for delays and 4.x.x; "mailbox full" (x.2.2, quota) counts as
soft everywhere, since it clears when the person makes room.

``reason`` is one line, ``"<rule>: <what it saw>"``, e.g.
``"dsn: failed 5.1.1 for bob@example.com"``. When the message was sent to our VERP
bounce address the reason ends with ``[outbox <id>]``; :func:`verp_outbox_id` returns
that id directly.

The screen is pure (no I/O, no clock) and never raises: each rule runs in its own
``try`` block, because the modern email policy raises on malformed headers and
real-world bounces are full of them (broken boundaries, unknown charsets, 8-bit bytes in
headers, MIME parts that claim to be multipart but are not).
"""

from __future__ import annotations

import email.header
import email.policy
import email.utils
import html
import logging
import re
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage, Message

from service.core.gateway import strip_subject_tags
from service.core.model import Evidence, Kind, Screening

__all__ = ["RULES", "Rule", "screen", "verp_outbox_id"]

# flufl.bounce logs every detector it runs at INFO and every exception with a traceback;
# we catch those exceptions ourselves, so its logger must not flood the service log.
logging.getLogger("flufl.bounce").setLevel(logging.CRITICAL)

_MAX_TEXT = 100_000  # bytes of body text we look at: long quotes never decide anything
_MAX_PARTS = 200  # MIME parts we visit: a hostile message can nest thousands
_FLUFL_MAX_BYTES = 256_000  # what flufl.bounce's line-by-line detectors get to read

# --------------------------------------------------------------------------------------
# Safe access to a message that may be broken in any way
# --------------------------------------------------------------------------------------


def _unsurrogate(value: str) -> str:
    """Turn surrogate-escaped 8-bit header bytes (raw UTF-8/Latin-1 in headers) into text."""
    try:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except Exception:
        return value.encode("utf-8", "replace").decode("utf-8", "replace")


def _decode_words(value: str) -> str:
    """Decode RFC 2047 encoded-words; unknown charsets fall back to UTF-8 with replacement.

    We decode the raw header ourselves instead of asking the policy: ``policy.default``
    raises on some malformed headers, and ``make_header`` raises ``LookupError`` on charset
    labels such as ``x-unknown`` that bounces of spam carry.
    """
    value = _unsurrogate(value)
    if "=?" not in value:
        return " ".join(value.split())
    try:
        chunks = email.header.decode_header(value)
    except Exception:
        return " ".join(value.split())
    out: list[str] = []
    for chunk, charset in chunks:
        if isinstance(chunk, str):
            out.append(chunk)
            continue
        try:
            out.append(chunk.decode(charset or "ascii", "replace"))
        except (LookupError, TypeError):
            out.append(chunk.decode("utf-8", "replace"))
    return " ".join("".join(out).split())


def _headers(msg: Message, name: str) -> list[str]:
    """All values of header ``name``, decoded, never raising (raw values, not policy ones)."""
    name = name.lower()
    try:
        items = msg.raw_items() if hasattr(msg, "raw_items") else msg.items()
        return [_decode_words(str(v)) for k, v in items if str(k).lower() == name]
    except Exception:
        return []


def _header(msg: Message, name: str) -> str:
    """The first value of header ``name`` or ``""``."""
    values = _headers(msg, name)
    return values[0] if values else ""


def _content_type(part: Message) -> str:
    try:
        return part.get_content_type().lower()
    except Exception:
        return "text/plain"


def _param(part: Message, name: str) -> str:
    try:
        value = part.get_param(name)
    except Exception:
        return ""
    if isinstance(value, tuple):  # RFC 2231 (charset, language, value)
        value = value[2]
    return str(value or "").lower()


_ADDR_RE = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+"
)


_MAX_HEADER = 8000  # an address header longer than this is an attack, not a To line
_TOKEN_SPLIT = re.compile(r"[\s<>,;:\"'()\[\]]+")


def _find_addrs(text: str) -> list[str]:
    """Addr-specs in free text, lowercased, in linear time.

    Searching with an address pattern backtracks quadratically on a long run of
    address characters without an ``@`` (a 30 KB header took seconds); matching whole
    tokens does not.
    """
    out: list[str] = []
    for token in _TOKEN_SPLIT.split(text):
        if "@" in token:
            m = _ADDR_RE.fullmatch(token.strip("."))
            if m:
                out.append(m.group(0).lower())
    return out


def _addresses(values: Collection[str]) -> list[str]:
    """Lowercased addr-specs in address headers; tolerant of broken syntax."""
    found: list[str] = []
    for value in values:
        value = value[:_MAX_HEADER]
        try:
            pairs = email.utils.getaddresses([value])
        except Exception:
            pairs = []
        got = [a.strip().lower() for _, a in pairs if "@" in a]
        if not got:  # getaddresses gave up: fall back to anything that looks like one
            got = _find_addrs(value)
        found.extend(a.strip("<>.") for a in got)
    return found


def _local_part(address_header: str) -> str:
    """The local part of the first address in a From-like header, lowercased ('' if none).

    Bounces often say ``From: MAILER-DAEMON`` with no domain at all, or ``<>``.
    """
    address_header = address_header[:1000]
    try:
        pairs = email.utils.getaddresses([address_header])
    except Exception:
        pairs = []
    for _, addr in pairs:
        if addr:
            return addr.rsplit("@", 1)[0].strip().strip('"').lower()
    m = re.search(r"<([^<>@\s]{0,200})(?:@[^<>]{0,300})?>", address_header) or re.search(
        r"([^\s<>@\"]{1,200})(?:@|\s*$)", address_header
    )
    return m.group(1).lower() if m else ""


def _walk(msg: Message) -> Iterator[Message]:
    """The message's own MIME parts, depth first, *not* entering attached messages.

    An attached ``message/rfc822`` is the returned original or a quoted mail: its headers
    and text are someone else's and must not decide what this message is. Bounded in
    number, because broken boundaries can produce absurd trees.
    """
    stack: list[Message] = [msg]
    seen = 0
    while stack and seen < _MAX_PARTS:
        part = stack.pop()
        seen += 1
        yield part
        if _content_type(part).startswith("message/") and part is not msg:
            continue
        try:
            payload = part.get_payload() if part.is_multipart() else None
        except Exception:
            payload = None
        if isinstance(payload, list):
            stack.extend(reversed([p for p in payload if isinstance(p, Message)]))


def _attached_messages(msg: Message) -> Iterator[Message]:
    """The messages attached to this one (``message/rfc822`` and ``text/rfc822-headers``)."""
    for part in _walk(msg):
        ctype = _content_type(part)
        if ctype in ("message/rfc822", "message/global") and part is not msg:
            try:
                payload = part.get_payload()
            except Exception:
                continue
            if isinstance(payload, list):
                yield from (p for p in payload[:1] if isinstance(p, Message))
        elif ctype in ("text/rfc822-headers", "message/rfc822-headers", "message/global-headers"):
            text = _part_text(part)
            if text:
                try:
                    yield email.message_from_string(text)
                except Exception:
                    continue


def _charset_decode(data: bytes, charset: str) -> str:
    try:
        return data.decode(charset or "utf-8", "replace")
    except (LookupError, TypeError):
        # bogus labels (x-unknown, utf8mb4, ansi_x3.110-1983...) are common in NDRs
        return data.decode("utf-8", "replace")


def _part_text(part: Message) -> str:
    """A leaf part's text, decoded by its CTE and charset, never raising."""
    try:
        data = part.get_payload(decode=True)
    except Exception:
        data = None
    if data is None:
        try:
            payload = part.get_payload()
        except Exception:
            return ""
        if isinstance(payload, str):
            return _unsurrogate(payload)[:_MAX_TEXT]
        if isinstance(payload, list):  # message/delivery-status parsed into blocks
            blocks = []
            for block in payload:
                try:
                    blocks.append("\n".join(f"{k}: {v}" for k, v in block.raw_items()))
                except Exception:
                    continue
            return "\n\n".join(blocks)
        return ""
    return _charset_decode(data[:_MAX_TEXT], _param(part, "charset"))


_TAG_RE = re.compile(r"<(script|style)\b.*?</\1\s*>|<[^>]*>", re.I | re.S)


def _html_to_text(text: str) -> str:
    text = re.sub(r"<br\s*/?>|</p\s*>|</div\s*>|</tr\s*>", "\n", text, flags=re.I)
    return html.unescape(_TAG_RE.sub(" ", text))


# --------------------------------------------------------------------------------------
# The per-message context every rule reads
# --------------------------------------------------------------------------------------


@dataclass
class _Ctx:
    msg: Message
    raw: bytes
    own_addresses: frozenset[str]
    own_domain: str | None
    _cache: dict[str, object] = field(default_factory=dict)

    def h(self, name: str) -> str:
        return _header(self.msg, name)

    def hs(self, name: str) -> list[str]:
        return _headers(self.msg, name)

    @property
    def subject(self) -> str:
        # "[EXTERNAL] Automatic reply: …": the gateway's tag hides the responder's marker
        return strip_subject_tags(self.h("subject"))

    @property
    def from_local(self) -> str:
        if "from_local" not in self._cache:
            self._cache["from_local"] = _local_part(self.h("from"))
        return str(self._cache["from_local"])

    @property
    def from_addr(self) -> str:
        if "from_addr" not in self._cache:
            got = _addresses(self.hs("from"))
            self._cache["from_addr"] = got[0] if got else ""
        return str(self._cache["from_addr"])

    @property
    def text(self) -> str:
        """The message's own text (plain preferred, else HTML), without attached mail."""
        if "text" not in self._cache:
            plain: list[str] = []
            htmls: list[str] = []
            for part in _walk(self.msg):
                ctype = _content_type(part)
                if part.is_multipart() or _is_attachment(part):
                    continue
                if ctype == "text/plain":
                    plain.append(_part_text(part))
                elif ctype == "text/html":
                    htmls.append(_html_to_text(_part_text(part)))
            text = "\n".join(plain) if any(p.strip() for p in plain) else "\n".join(htmls)
            self._cache["text"] = text[:_MAX_TEXT]
        return str(self._cache["text"])

    @property
    def loose_text(self) -> str:
        """``text``, or when MIME parsing found none, the raw body as text.

        Broken MIME is common in NDRs from carriers (a ``boundary=`` parameter on an
        unfolded line, a part that claims to be multipart and has no parts): the words
        are still there in the bytes. Only the bounce heuristics, which are gated on the
        message looking like a report, read this.
        """
        if self.text.strip():
            return self.text
        if "loose" not in self._cache:
            raw = self.raw
            cut = min((i for i in (raw.find(b"\n\n"), raw.find(b"\r\n\r\n")) if i >= 0), default=0)
            self._cache["loose"] = raw[cut : cut + _MAX_TEXT].decode("utf-8", "replace")
        return str(self._cache["loose"])

    @property
    def opening(self) -> str:
        """The first few hundred characters of new text (before quotes/signature)."""
        if "opening" not in self._cache:
            self._cache["opening"] = _opening(self.loose_text, 600)
        return str(self._cache["opening"])

    @property
    def report_type(self) -> str:
        if _content_type(self.msg) == "multipart/report":
            return _param(self.msg, "report-type")
        return ""

    def parts_of(self, *ctypes: str) -> list[Message]:
        return [p for p in _walk(self.msg) if _content_type(p) in ctypes]


def _is_attachment(part: Message) -> bool:
    try:
        return (part.get_content_disposition() or "") == "attachment"
    except Exception:
        return False


# --------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------

# Local parts that only machines send from. post_master: Verizon's MMS gateway; MMSC
# and "mail-daemon"/"mailerdaemon" spellings come from old MTAs and carriers.
_DAEMON_LOCALS = re.compile(
    r"^(mailer[-_.]?daemon|mail[-_.]?daemon|m?daemon|post[-_.]?master|postoffice|mmsc?|"
    r"mail[-_.]?delivery[-_.]?(system|subsystem)?|ndr|bounces?|smtp[-_.]?gateway)$"
)
_NOREPLY_LOCALS = re.compile(
    r"^(no[-_.]?reply|do[-_.]?not[-_.]?reply|dont[-_.]?reply|noreply[-_.+].*|"
    r"no[-_.]reply[-_.+].*|mailer[-_.]?daemon|mail[-_.]?daemon|post[-_.]?master)$"
)
# List managers (fml, ezmlm, Mailman, Majordomo) write from owner-x, x-admin, x-request.
_LIST_ADMIN_LOCALS = re.compile(r"^(owner-.+|.+-(admin|owner|request|bounces))$")
# ...and reject a post from a non-member or a looping message like a bounce.
_LIST_REJECT = re.compile(
    r"\bnot\s+(a\s+)?member\b|\bnon-?member|loop\s+alert|duplicated\s+message-id|"
    r"not\s+allowed\s+to\s+post|post(ing)?\s+(was\s+)?rejected",
    re.I,
)
_REPLY_PREFIX = re.compile(
    r"^\s*(re|aw|sv|vs|antw|antwort|réf|ref|rép|rif|odp|res|fwd?|wg|tr|enc|doorst)\s*"
    r"(\[\d+\])?\s*:",
    re.I,
)

# Subjects NDRs use, in the languages the corpus and Exchange/Gmail localisations show.
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|not\s+(be\s+)?delivered|non[-\s]?deliver|delivery\s+(status\s+"
    r"notification|notification|failure|failed|problem|report|has\s+failed|status)|"
    r"mail\s+delivery\s+(failed|failure|problem|status|warning|system)|delivery\s+failure|"
    r"returned\s+mail|mail\s+returned|return(ed)?\s+to\s+sender|failure\s+notice|"
    r"failed\s+(mail|delivery)|mail\s+(error|failure|failed|not\s+delivered)|"
    r"delayed\s+mail|message\s+delayed|user\s+unknown|\bdelayed\b.*\b(hours?|days?)\b|could\s+not\s+"
    r"(be\s+)?(sent|delivered|send)|warning:\s*(could\s+not|message)|"
    r"mail\s+system\s+error|postmaster\s+notify|nondeliverable|unzustellbar|"
    r"nicht\s+zustellbar|non\s+remis|non\s+recapitabile|onbestelbaar|no\s+entregado|"
    r"imposible\s+entregar|não\s+entregue|olevererbart|kan\s+ikke\s+leveres|"
    r"niedostarczon|nedoručitel|nedoruč|kézbesíthetetlen|doručen|"
    r"メッセージを配信できません|メールエラー|配信不能|未送達|退信|无法投递|退回|"
    r"недоставлен|не\s+доставлен|не\s+может\s+быть\s+доставлен",
    re.I,
)
# Wording of NDR bodies. Checked only on mail that already looks like a delivery report.
_BOUNCE_BODY = re.compile(
    r"could\s+not\s+be\s+delivered|couldn'?t\s+be\s+delivered|was\s+not\s+delivered|"
    r"undeliver|delivery\s+(has\s+)?failed|delivery\s+to\s+the\s+following|"
    r"permanent(ly)?\s+(fatal\s+)?(error|failure)|user\s+unknown|unknown\s+user|"
    r"no\s+such\s+(user|mailbox|address|recipient)|mailbox\s+(is\s+)?(full|unavailable|"
    r"not\s+found|disabled|quota)|over\s+quota|quota\s+exceeded|invalid\s+(user|recipient|"
    r"address|mailbox)|recipient\s+(address\s+)?rejected|host\s+unknown|"
    r"not\s+a\s+valid\s+(user|recipient|mailbox)|returned\s+to\s+sender|"
    r"message\s+(was\s+)?(rejected|blocked|returned|could\s+not)|failed\s+recipient|"
    r"following\s+(address|recipient)|delivery\s+(is\s+)?delayed|has\s+not\s+(yet\s+)?been\s+"
    r"delivered|will\s+(continue\s+to\s+)?(be\s+)?retr|still\s+trying|transcript\s+of\s+"
    r"session|error\s+sending|\b[45]\d\d[\s-]+[45]\.\d{1,3}\.\d{1,3}\b|\b55[0-4]\b|"
    r"no\s+longer\s+(valid|exist|active)|doesn'?t\s+exist|does\s+not\s+exist|"
    r"nicht\s+zugestellt|unzustellbar|non\s+remis|no\s+se\s+pudo\s+entregar|"
    r"配信|送信できません|宛先|недоставлен|не\s+доставлен",
    re.I,
)
# How NDRs *open*. Strong enough to mark a report by itself when it is the first thing
# the message says (Lotus Notes gateways send "RE: <subject> : non remis" from a normal
# mailbox, so neither sender nor subject gives them away).
_NDR_OPENING = re.compile(
    r"your\s+(message|mail|e-?mail)\s+(to\s+\S+\s+)?(could\s+not|couldn'?t|was\s+not|"
    r"cannot)\s+be\s+delivered|could\s+not\s+be\s+delivered\s+to\s+(the\s+following|one)|"
    r"delivery\s+to\s+the\s+following\s+recipients?\s+(has\s+)?failed|"
    r"automatically\s+generated\s+delivery\s+status\s+notification|"
    r"this\s+is\s+the\s+mail\s+system\s+at\s+host|sorry\s+to\s+(have\s+to\s+)?inform\s+you\s+"
    r"that\s+your\s+message|created\s+automatically\s+by\s+mail\s+delivery\s+software|"
    r"the\s+following\s+(message\s+to\s+\S+\s+was\s+undeliverable|addresses?\s+(had|failed))|"
    r"automatic\s+bounce\s+notification|"
    r"n'a\s+pas\s+pu\s+(être|etre)\s+(délivré|delivre|remis|distribué)|"
    r"konnte\s+nicht\s+zugestellt\s+werden|no\s+se\s+(ha\s+)?pud[oe]\s+entregar|"
    r"kon\s+niet\s+(worden\s+)?(bezorgd|afgeleverd)",
    re.I,
)
_MAILBOX_FULL = re.compile(
    r"mailbox\s+(is\s+)?full|over\s+quota|quota\s+exceeded|"
    r"exceeded\s+(the\s+)?(storage|quota)|5\.2\.2",
    re.I,
)
_HARD_WORDS = re.compile(
    r"user\s+unknown|unknown\s+user|no\s+such\s+(user|mailbox|address)|"
    r"does\s+not\s+exist|doesn'?t\s+exist|5\.1\.[0-3]\b",
    re.I,
)
_TEMPORARY = re.compile(
    r"\bdelay(ed)?\b|\bwarning\b|will\s+(continue\s+to\s+)?(be\s+)?retr(y|ied)|"
    r"still\s+(being\s+)?(trying|retried)|not\s+yet\s+been\s+delivered|"
    r"temporar(y|ily)|try\s+again\s+later|\bdeferred\b|quota|mailbox\s+(is\s+)?full|"
    r"could\s+not\s+send\s+(mail|message)"
    r"\s+for\s+(the\s+)?past|\b4\.\d{1,3}\.\d{1,3}\b",
    re.I,
)

_AUTOREPLY_SUBJECT = re.compile(
    r"^\s*(\[?(auto(matic|matische|matisch|matica|mática|mático|matique|matiskt?|maattinen|"
    r"matyczna|mat)?[-_\s]?(reply|response|respons|respuesta|risposta|resposta|réponse|"
    r"antwort|antwoord|svar|odpowied\w*|vastaus|besvarelse|atbilde|yanıt|ответ))\]?\s*[:\-–])|"
    r"^\s*auto\s*:|"  # Lotus Notes: "AUTO: Smith, John is out of the office"
    r"^\s*(out\s+of\s+(the\s+)?office|ooo\b|away\s+from\s+(the\s+)?office|on\s+vacation|"
    r"vacation\s+(reply|response|notice)|abwesenheitsnotiz|abwesenheit|abwesend|"
    r"nicht\s+im\s+büro|außer\s+haus|absent(e)?\s+du\s+bureau|absence\b|"
    r"fuera\s+de\s+(la\s+)?oficina|ausente\b|afwezig|niet\s+aanwezig|niet\s+op\s+kantoor|"
    r"fuori\s+ufficio|assente\b|ausência|fora\s+do\s+escritório|frånvaro|fraværende|"
    r"poza\s+biurem|nieobecn\w*|arpus\s+biroja|atvaļinājum\w*|autoreply|autoresponder|"
    r"autosvar|autoantwort)\b|"
    r"\b(automatic|auto)[-\s]?(reply|response)\)?\s*$|"  # AOL: "Re: blah (Automatic Response)"
    r"(automatische\s+antwort|réponse\s+automatique|respuesta\s+automática|"
    r"automatisch\s+antwoord|risposta\s+automatica|resposta\s+automática|automatiskt\s+svar|"
    r"automatisk\s+svar|automatyczna\s+odpowiedź|automātiskā\s+atbilde|automatiska\s+atbilde|"
    r"автоответ|автоматический\s+ответ|自動応答|自動返信|自动回复|自動回覆|자동\s*응답)|"
    r"\[(ticket|case|request|support|incident)\s*(#|no\.?|id:?)?\s*[\w-]*\d+\]|"
    r"^\s*(ticket|case|request)\s*#?\s*\d+\s*(received|created|opened|logged)",
    re.I,
)
_ACK_SUBJECT = re.compile(
    r"^\s*(thank\s*(you|s)\s+for\s+(your\s+)?(e-?mail|message|mail|inquiry|enquiry|"
    r"request|contacting)|we('ve|\s+have)\s+received\s+your|message\s+received|"
    r"request\s+received|vielen\s+dank\s+für\s+ihre|merci\s+pour\s+votre|"
    r"gracias\s+por\s+su|bedankt\s+voor\s+uw)",
    re.I,
)

# Bodies that announce themselves as machine-written. Enough on their own in a short
# new text: no person writes "This is an automated response" about themselves.
_AUTO_BODY_STRONG = re.compile(
    r"\bthis\s+is\s+an?\s+auto(?:mated|matic|matically\s+generated|-generated)\s*[-\s]?"
    r"(?:response|reply|message|e-?mail|notification|acknowledge?ment)|"
    r"\b(?:this|the)\s+(?:message|e-?mail|reply)\s+(?:was|is\s+being|has\s+been)\s+"
    r"(?:sent|generated)\s+automatically|"
    r"\byour\s+(?:ticket|request|case|support\s+request|enquiry|inquiry)\s+(?:#?\s?[\w-]+\s+)?"
    r"(?:has\s+been|was|is)\s+(?:received|created|opened|logged|registered)|"
    r"\[\s*(?:ticket|case|request)\s*#?\s*[\w-]*\d+\s*\]|"
    r"\bthis\s+(?:mailbox|inbox|e-?mail\s+(?:address|account|inbox)|address)\s+is\s+"
    r"(?:no\s+longer|not)\s+(?:in\s+use|monitored|active|being\s+monitored|checked)|"
    r"\bdies\s+ist\s+eine\s+automatische\s+(?:antwort|nachricht|benachrichtigung)|"
    r"\bceci\s+est\s+une?\s+(?:réponse|message)\s+automatique|"
    r"\besta\s+es\s+una\s+respuesta\s+automática|\bdit\s+is\s+een\s+automatisch\s+"
    r"(?:antwoord|bericht|gegenereerd)",
    re.I,
)
# Openings of out-of-office and acknowledgement bodies. Present tense first person only:
# "I was out of office last week" is a person talking, "I am out of the office" a robot.
_OOO_BODY = re.compile(
    r"\bI(?:'m|\s+am|\s+will\s+be|'ll\s+be)\s+(?:currently\s+|now\s+|presently\s+)?"
    r"(?:out\s+of\s+(?:the\s+)?office|away\b|on\s+(?:annual\s+|parental\s+|maternity\s+|"
    r"paternity\s+|sick\s+)?(?:leave|vacation|holiday|holidays|business\s+travel)|"
    r"travel+ing|off\s+work|not\s+in\s+the\s+office|out\s+of\s+the\s+country|absent)|"
    r"\bwe\s+(?:have|'ve)\s+received\s+your\s+(?:e-?mail|message|request|inquiry|enquiry)|"
    r"\bthank\s+you\s+for\s+(?:your\s+)?(?:e-?mail|message)[.!,]\s+I\s+(?:am|will|'m)\b|"
    r"\bich\s+bin\s+(?:\S+\s+){0,6}?(?:nicht\s+im\s+(?:büro|hause|haus)|abwesend|im\s+urlaub|"
    r"außer\s+haus|auf\s+dienstreise|in\s+elternzeit)|"
    r"\b(?:befinde\s+mich|bin)\s+(?:\S+\s+){0,4}?(?:im\s+urlaub|auf\s+dienstreise)|"
    r"\bje\s+(?:suis|serai)\s+(?:actuellement\s+|absente?\s+)?(?:absente?|en\s+(?:congés?|"
    r"vacances|déplacement)|hors\s+du\s+bureau)|"
    r"\b(?:estoy|estaré)\s+(?:\S+\s+){0,2}?(?:fuera\s+de\s+(?:la\s+)?oficina|ausente|"
    r"de\s+vacaciones)|"
    r"\bik\s+ben\s+(?:\S+\s+){0,5}?(?:afwezig|niet\s+aanwezig|op\s+vakantie|"
    r"niet\s+op\s+kantoor)|"
    r"\b(?:sono|sarò)\s+(?:\S+\s+){0,2}?(?:fuori\s+(?:ufficio|sede)|in\s+ferie|assente)|"
    r"\b(?:estou|estarei)\s+(?:\S+\s+){0,2}?(?:fora\s+do\s+escritório|de\s+férias|ausente)|"
    r"\bjag\s+är\s+(?:\S+\s+){0,3}?(?:ledig|på\s+semester|inte\s+på\s+kontoret)|"
    r"\besmu\s+atvaļinājumā|\bjestem\s+(?:\S+\s+){0,3}?(?:na\s+urlopie|poza\s+biurem)",
    re.I,
)
# What follows an out-of-office opening: a return date, limited access, who else to
# write to. One of these must back an opening phrase in a body-only verdict.
_OOO_SUPPORT = re.compile(
    r"\b(?:until|till|through|returning|return(?:ing)?\s+on|back\s+(?:on|in\s+the\s+office)|"
    r"upon\s+my\s+return|on\s+my\s+return|will\s+(?:respond|reply|get\s+back|answer)|"
    r"respond\s+as\s+soon\s+as|reply\s+as\s+soon\s+as|"
    r"bis\s+(?:einschließlich|zum|\d)|ab\s+dem|zurück|jusqu'(?:au|à)|de\s+retour|"
    r"hasta\s+el|a\s+mi\s+regreso|tot\s+en\s+met|tot\s+\d|weer\s+aanwezig|"
    r"fino\s+al|al\s+mio\s+rientro|até|\d{1,2}[./-]\d{1,2})",
    re.I,
)
# Cues that only responders write. A person may say "I'm away until Monday" in a real
# reply to us ("Re: ..."); they do not add "for urgent matters please contact...".
_AUTO_CUE = re.compile(
    r"\bauto(?:matic|mated|matically)|limited\s+(?:access|e-?mail|connectivity)|"
    r"no\s+access\s+to\s+(?:my\s+)?e-?mail|(?:for\s+)?urgent\s+(?:matters|issues|requests|"
    r"inquiries|enquiries)|if\s+(?:your\s+matter\s+is\s+|it\s+is\s+|this\s+is\s+)?urgent|"
    r"please\s+contact|in\s+my\s+absence|only\s+notification|will\s+not\s+be\s+(?:read|"
    r"forwarded)|in\s+dringenden\s+fällen|wird\s+nicht\s+weitergeleitet|"
    r"wenden\s+sie\s+sich|en\s+cas\s+d'urgence|ne\s+sera\s+pas\s+(?:lu|transféré)|"
    r"en\s+caso\s+de\s+urgencia|in\s+dringende\s+gevallen|in\s+caso\s+di\s+urgenza",
    re.I,
)
# Words of someone answering our question about an introduction: such a body is a
# person's, even if it also says they are away ("out of office until Monday, but the
# intro went great").
_HUMAN_ANSWER = re.compile(
    r"\bintro(?:duction|duced|duce|duced\s+us)?s?\b|\bwent\s+(?:well|great|fine|badly)|"
    r"\bwe\s+(?:met|spoke|talked|chatted|had\s+a\s+(?:call|chat|meeting))\b|"
    r"\bthanks\s+for\s+connecting|\bkennengelernt|\bvorstellung|\bprésentation|"
    r"\bpresentación|\bintroductie|\bvoorgesteld",
    re.I,
)
# Challenge-response systems (Boxbe, Bluebottle, SpamArrest...). One strong phrase, or
# two weak ones: a person may well mention a "guest list" in an answer about an event.
_CHALLENGE_STRONG = re.compile(
    r"\bthis\s+(?:account|mailbox|address)\s+is\s+protected\s+by\b|"
    r"\bsender\s+(?:is\s+)?not\s+pre-?approved|\bhas\s+been\s+waitlisted\b|x-boxbe-notice|"
    r"\bchallenge[-\s]response\b|"
    r"\bverify\s+(?:that\s+)?you\s+are\s+(?:a\s+)?(?:human|real\s+person|not\s+a\s+robot)",
    re.I,
)
_CHALLENGE_WEAK = re.compile(
    r"\bguest\s+list\b|\ballowed\s+(?:senders?\s+)?list\b|\bapproved\s+senders\b|"
    r"\bwhite-?list(?:ed)?\b|\bclick\s+(?:on\s+)?(?:the\s+)?(?:following\s+)?link\b|"
    r"\bone-time\s+(?:automated\s+)?message\b|\b(?:add|added)\s+(?:yourself|your\s+"
    r"(?:e-?mail\s+)?address)\s+to\b",
    re.I,
)
_LIST_HEADERS = (
    "list-id",
    "list-post",
    "list-help",
    "list-subscribe",
    "mailing-list",
    "x-mailman-version",
    "x-mlserver",
    "x-ml-name",
    "x-mailing-list",
    "x-list-administrivia",
    "x-beenthere",
)

# --------------------------------------------------------------------------------------
# VERP
# --------------------------------------------------------------------------------------

# The tag may carry a signature after the id (``bounce-42-k3j5...``): the screen only
# reads the shape; whoever acts on the id checks the signature (service.core.tokens).
_VERP_RE = re.compile(
    r"^(?P<local>[^@+\s]+)\+bounce-(?P<id>\d{1,18})(?:-[a-z0-9]{1,64})?@(?P<domain>[^@\s]+)$",
    re.I,
)
_RECIPIENT_HEADERS = (
    "delivered-to",
    "x-original-to",
    "envelope-to",
    "x-envelope-to",
    "x-delivered-to",
    "to",
    "cc",
)


def verp_outbox_id(msg: Message, own_addresses: Collection[str] = ()) -> int | None:
    """The outbox row id encoded in our VERP bounce address, if the message was sent to it.

    We send with envelope sender ``<local>+bounce-<id>[-<sig>]@<domain>`` where
    ``<local>@<domain>`` is one of ``own_addresses``, so anything addressed there is about
    outbox row ``<id>``: a bounce, or an auto-reply from a responder that (correctly, per
    RFC 3834) answers the envelope sender. The receiving MTA records that address in
    ``Delivered-To``/``X-Original-To``; some MTAs uppercase it, so matching ignores case.
    The signature is not checked here (the screen has no secret). Never raises.
    """
    try:
        own = {a.strip().lower() for a in own_addresses}
        for name in _RECIPIENT_HEADERS:
            for addr in _addresses(_headers(msg, name)):
                m = _VERP_RE.match(addr)
                if m and f"{m['local']}@{m['domain']}".lower() in own:
                    return int(m["id"])
    except Exception:
        return None
    return None


# --------------------------------------------------------------------------------------
# Delivery-status parsing (RFC 3464, RFC 6533)
# --------------------------------------------------------------------------------------


@dataclass
class _Recipient:
    address: str
    action: str
    status: str


_STATUS_RE = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_SMTP_CODE_RE = re.compile(r"\b([245])\d\d\b")


def _field_blocks(part: Message) -> list[list[tuple[str, str]]]:
    """The field blocks of a delivery-status part: one per-message block, then one per
    recipient. Python parses ``message/delivery-status`` into a list of header blocks;
    when the part is malformed (base64 encoded, no blank lines) we parse its text."""
    try:
        payload = part.get_payload()
    except Exception:
        payload = None
    blocks: list[list[tuple[str, str]]] = []
    if isinstance(payload, list) and payload:
        for block in payload:
            try:
                blocks.append(
                    [(str(k).lower(), _decode_words(str(v))) for k, v in block.raw_items()]
                )
            except Exception:
                continue
        if any(blocks):
            return blocks
    text = _part_text(part)
    current: list[tuple[str, str]] = []
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = []
        elif line[:1] in " \t" and current:
            name, value = current[-1]
            current[-1] = (name, value + " " + line.strip())
        elif ":" in line:
            name, value = line.split(":", 1)
            current.append((name.strip().lower(), value.strip()))
    if current:
        blocks.append(current)
    return blocks


def _dsn_address(value: str) -> str:
    """``rfc822; Bob@Example.com`` -> ``bob@example.com`` (types and brackets vary)."""
    if ";" in value:  # address type: rfc822, utf-8, and in the wild "smtp", "X-Local"...
        value = value.split(";", 1)[1]
    found = _find_addrs(value[:_MAX_HEADER])
    return found[0] if found else ""


def _dsn_recipients(part: Message) -> list[_Recipient]:
    recipients: list[_Recipient] = []
    for block in _field_blocks(part):
        fields: dict[str, str] = {}
        for name, value in block:
            fields.setdefault(name, value)
        if not ({"final-recipient", "original-recipient", "action"} & fields.keys()):
            continue
        # Original-Recipient is what we sent to (before the receiver's aliasing), so it
        # names the party we know; Final-Recipient otherwise.
        address = _dsn_address(fields.get("original-recipient", "")) or _dsn_address(
            fields.get("final-recipient", "")
        )
        action = fields.get("action", "").split()[0].lower() if fields.get("action") else ""
        # Non-standard spellings seen in the wild (Domino, old Exchange): failure, error...
        action = _ACTION_ALIASES.get(action, action)
        status = ""
        for source in (fields.get("status", ""), fields.get("diagnostic-code", "")):
            m = _STATUS_RE.search(source)
            if m:
                status = m.group(0)
                break
        if not status:
            m = _SMTP_CODE_RE.search(fields.get("diagnostic-code", ""))
            if m:
                status = f"{m.group(1)}.0.0"
        if address or action:
            recipients.append(_Recipient(address, action, status))
    return recipients


_SUCCESS_ACTIONS = {"delivered", "relayed", "expanded", "deliverable"}
_ACTION_ALIASES = {
    "failure": "failed",
    "fail": "failed",
    "error": "failed",
    "undeliverable": "failed",
    "bounced": "failed",
    "rejected": "failed",
    "delay": "delayed",
    "deferred": "delayed",
}


# --------------------------------------------------------------------------------------
# The rules
# --------------------------------------------------------------------------------------


class _Pass:
    """Returned by a rule that knows the message must reach the person-mail stages."""

    def __repr__(self) -> str:
        return "PASS"


_PASS = _Pass()


@dataclass(frozen=True)
class Rule:
    """One step of the screen: ``name`` appears at the start of every reason it gives.

    ``kind`` is what the rule usually decides (some also give IGNORED or BOUNCE, see the
    module table); None for a rule that lets a message through as a person's.
    """

    name: str
    kind: Kind | None
    doc: str
    check: Callable[[_Ctx], Screening | _Pass | None]


def _verdict(
    ctx: _Ctx,
    kind: Kind,
    rule: str,
    detail: str,
    failed: Collection[str] = (),
    permanent: bool = False,
    evidence: Evidence = Evidence.AUTOMATIC,
) -> Screening:
    reason = f"{rule}: {' '.join(detail.split())}"
    if kind is Kind.BOUNCE or kind is Kind.AUTOREPLY:
        outbox = verp_outbox_id(ctx.msg, ctx.own_addresses)
        if outbox is not None:
            reason += f" [outbox {outbox}]"
    clean = tuple(dict.fromkeys(a.lower() for a in failed if a))
    return Screening(kind=kind, reason=reason, failed=clean, permanent=permanent,
                     evidence=evidence)


def _rule_loop(ctx: _Ctx) -> Screening | None:
    if ctx.hs("x-introloop-loop"):
        return _verdict(ctx, Kind.IGNORED, "loop", "X-Introloop-Loop header: our own mail")
    if ctx.from_addr and ctx.from_addr in ctx.own_addresses:
        return _verdict(ctx, Kind.IGNORED, "loop", f"From is our own address {ctx.from_addr}")
    mid = ctx.h("message-id").strip()
    if _is_minted(mid, ctx.own_domain):
        return _verdict(ctx, Kind.IGNORED, "loop", f"Message-ID {mid} is one we minted")
    return None


def _is_minted(message_id: str, domain: str | None) -> bool:
    """Whether ``message_id`` is one the service minted for ``domain``.

    The domain alone is not enough: members often write from the network's own domain,
    and their servers mint ids there too. The shape belongs to service.core.outgoing.
    """
    if not domain or not message_id:
        return False
    try:
        from service.core.outgoing import is_minted
    except Exception:  # outgoing unavailable: same shape as its stable_message_id
        m = re.match(r"^[a-z0-9-]+\.[0-9a-f]{24}@(.+)$", message_id.strip().strip("<>").lower())
        return bool(m) and m.group(1) == domain.lower()
    try:
        return bool(is_minted(message_id.strip(), domain))
    except Exception:
        return False


_ARF_RECIPIENT_FIELD = re.compile(
    r"^(?:original-rcpt-to|removal-recipient)[ \t]*:[ \t]*(?P<value>.+)$", re.I | re.M
)


def _complainants(ctx: _Ctx) -> list[str]:
    """Who complained, as far as a complaint report tells: addresses to stop writing to.

    ARF names the complaining recipient in ``Original-Rcpt-To`` / ``Removal-Recipient``
    (often redacted or hashed, so these are only candidates: the caller acts on addresses
    it has written to). Hotmail's JMRP stamps ``X-HmXmrOriginalRecipient`` on the attached
    copy. Failing both, the attached original's To counts only when that original is our
    own mail (our From or a Message-ID we minted): then its one recipient is the party who
    pressed "report spam". The To of anyone else's mail is never taken.
    """
    found: list[str] = []
    for part in ctx.parts_of("message/feedback-report"):
        for m in _ARF_RECIPIENT_FIELD.finditer(_part_text(part)):
            found += [a for _, a in email.utils.getaddresses([m.group("value")])]
    for original in _attached_messages(ctx.msg):
        for value in _headers(original, "x-hmxmroriginalrecipient"):
            found += [a for _, a in email.utils.getaddresses([value])]
        from_addr = email.utils.parseaddr(_header(original, "from"))[1].lower()
        if from_addr in ctx.own_addresses or _is_minted(
            _header(original, "message-id"), ctx.own_domain
        ):
            for value in _headers(original, "to"):
                found += [a for _, a in email.utils.getaddresses([value])]
    return [
        a
        for a in (x.strip().strip("<>").lower() for x in found)
        if re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", a) and a not in ctx.own_addresses
    ]


def _by(complainants: Sequence[str]) -> str:
    """The reason's tail naming who complained (or that the report does not say)."""
    if not complainants:
        return "; complainant not named"
    more = " ..." if len(complainants) > 3 else ""
    return "; complaint by " + ", ".join(complainants[:3]) + more


def _rule_arf(ctx: _Ctx) -> Screening | None:
    # A complaint is not a bounce (the mail was delivered) and never gets an answer, but
    # it is the clearest "stop writing to me" there is: ``failed`` names the complainants
    # so the loop can suppress them like an opt-out.
    if ctx.report_type == "feedback-report" or ctx.parts_of("message/feedback-report"):
        who = _complainants(ctx)
        return _verdict(
            ctx, Kind.IGNORED, "arf", "abuse/complaint feedback report (RFC 5965)" + _by(who),
            failed=who,
        )
    # Hotmail/Outlook.com JMRP predates ARF: "complaint about message from <ip>" with the
    # reported mail attached, stamped X-HmXmrOriginalRecipient.
    if re.match(r"\s*complaint\s+about\s+message\s+from\b", ctx.subject, re.I) or any(
        _headers(m, "x-hmxmroriginalrecipient") for m in _attached_messages(ctx.msg)
    ):
        who = _complainants(ctx)
        return _verdict(
            ctx, Kind.IGNORED, "arf", "Hotmail JMRP complaint report" + _by(who), failed=who
        )
    if _ses_field(ctx, "notificationType") == "Complaint":
        return _verdict(ctx, Kind.IGNORED, "arf", "Amazon SES complaint notification")
    return None


def _rule_unsubscribe(ctx: _Ctx) -> Screening | _Pass | None:
    # Apple Mail's "Unsubscribe" banner and RFC 2369 mailto links send a message marked
    # Auto-Submitted on the person's behalf. It is automatic, but it is their opt-out:
    # it must reach the reply stage and be honoured, never be dropped as an auto-reply.
    if ctx.h("x-apple-unsubscribe").strip().lower() == "true" or re.fullmatch(
        r"\s*unsubscribe\s*", ctx.subject, re.I
    ):
        return _PASS
    return None


def _rule_mdn(ctx: _Ctx) -> Screening | None:
    parts = ctx.parts_of(
        "message/disposition-notification", "message/global-disposition-notification"
    )
    if ctx.report_type != "disposition-notification" and not parts:
        return None
    disposition = ""
    for part in parts:
        m = re.search(r"^disposition\s*:\s*(.+)$", _part_text(part), re.I | re.M)
        if m:
            disposition = m.group(1).strip().lower()
            break
    # Sieve "reject" and Dovecot's quota rejections travel as MDNs with a "deleted"
    # (or "denied"/"failed") disposition: the mail never reached a person, a bounce.
    if (
        re.search(r";\s*(deleted|denied|failed)\b", disposition)
        or "rejected" in ctx.h("auto-submitted").lower()
    ):
        failed = []
        for part in parts:
            m = re.search(r"^final-recipient\s*:\s*(.+)$", _part_text(part), re.I | re.M)
            if m and _dsn_address(m.group(1)):
                failed.append(_dsn_address(m.group(1)))
        temporary = bool(_TEMPORARY.search(ctx.text[:2000]))
        return _verdict(
            ctx,
            Kind.BOUNCE,
            "mdn",
            f"rejection sent as a disposition notification ({disposition or '?'})"
            + (f" for {', '.join(failed)}" if failed else ""),
            failed,
            permanent=not temporary,
        )
    shown = f": {disposition}" if disposition else ""
    return _verdict(ctx, Kind.IGNORED, "mdn", f"read receipt (disposition notification{shown})")


def _rule_challenge(ctx: _Ctx) -> Screening | None:
    # A daemon's rejection that *mentions* a whitelist is a bounce of our own server,
    # not a challenge to us; only a responder acting for the recipient counts here.
    if _DAEMON_LOCALS.match(ctx.from_local):
        return None
    text = ctx.text[:5000]
    for part in ctx.parts_of("message/delivery-status"):
        text += "\n" + _part_text(part)[:2000]
    strong = _CHALLENGE_STRONG.search(text)
    weak = {m.group(0).lower() for m in _CHALLENGE_WEAK.finditer(text)}
    if strong or (len(weak) >= 2 and not _speaks_of_intro(ctx, ctx.opening)):
        what = strong.group(0) if strong else " + ".join(sorted(weak))
        return _verdict(ctx, Kind.AUTOREPLY, "challenge", f"challenge-response notice ({what!r})")
    return None


def _rule_dsn(ctx: _Ctx) -> Screening | None:
    parts = ctx.parts_of("message/delivery-status", "message/global-delivery-status")
    if not parts:
        return None
    recipients = [r for p in parts for r in _dsn_recipients(p)]
    if not recipients:
        return None
    failed = [r for r in recipients if r.action not in _SUCCESS_ACTIONS]
    if not failed:
        who = ", ".join(r.address for r in recipients if r.address) or "?"
        return _verdict(ctx, Kind.IGNORED, "dsn", f"success DSN ({recipients[0].action}) for {who}")
    # Hard: the MTA gave up ("failed", or no Action at all in broken DSNs) with a 5.x.x
    # status, except x.2.2 "mailbox full", which RFC 3463 allows for transient errors
    # and which clears when the person empties their mailbox: we retry those later.
    hard = [
        r
        for r in failed
        if r.action in ("failed", "")
        and r.status[:1] in ("5", "")
        and not r.status.startswith(("5.2.2",))
    ]
    chosen = hard or failed
    codes = ",".join(sorted({r.status or "no status" for r in chosen}))
    who = ", ".join(r.address for r in chosen if r.address) or "unknown recipient"
    actions = ",".join(sorted({r.action or "no action" for r in chosen}))
    return _verdict(
        ctx,
        Kind.BOUNCE,
        "dsn",
        f"{actions} {codes} for {who}",
        [r.address for r in chosen],
        permanent=bool(hard),
    )


def _ses_field(ctx: _Ctx, name: str) -> str:
    """A string field of an Amazon SES notification (SNS e-mail subscription) body.

    The JSON arrives either bare or escaped inside the SNS envelope's "Message" string,
    and mail gateways wrap its long lines, so we read fields with a tolerant pattern
    rather than a JSON parser. Only bodies that *start* with ``{`` are considered.
    """
    text = ctx.text.lstrip()[:20000]
    if not text.startswith("{") or "notificationType" not in text:
        return ""
    m = re.search(r'\\?"' + re.escape(name) + r'\\?"\s*:\s*\\?"([^"\\]*)', text)
    return m.group(1) if m else ""


def _rule_ses(ctx: _Ctx) -> Screening | None:
    kind = _ses_field(ctx, "notificationType")
    if kind == "Delivery":
        return _verdict(ctx, Kind.IGNORED, "ses", "Amazon SES delivery (success) notification")
    if kind != "Bounce":
        return None
    text = ctx.text[:20000]
    block = re.search(r"bouncedRecipients\\?\"\s*:\s*\[(.*?)\]", text, re.S)
    recipients = _addresses(
        re.findall(r'emailAddress\\?"\s*:\s*\\?"([^"\\]+)', block.group(1) if block else "")
    )
    bounce_type = _ses_field(ctx, "bounceType")
    sub_type = _ses_field(ctx, "bounceSubType")
    return _verdict(
        ctx,
        Kind.BOUNCE,
        "ses",
        f"Amazon SES {bounce_type}/{sub_type} for {', '.join(recipients) or '?'}",
        recipients,
        permanent=bounce_type.lower() == "permanent",
    )


def _rule_x_failed(ctx: _Ctx) -> Screening | None:
    values = ctx.hs("x-failed-recipients")
    if not values:
        return None
    failed = _addresses(values)
    permanent = _is_permanent(ctx, default=not _TEMPORARY.search(ctx.subject))
    return _verdict(
        ctx,
        Kind.BOUNCE,
        "x-failed-recipients",
        f"Exim X-Failed-Recipients {', '.join(failed) or values[0]}",
        failed,
        permanent,
    )


# Where the returned original starts inside a text part (qmail, Exim, Sendmail, Notes):
# status codes after this point are the original's, not the report's.
_ORIGINAL_MARKER = re.compile(
    r"^.*(below\s+this\s+line\s+is\s+a\s+copy|this\s+is\s+a\s+copy\s+of\s+the\s+message|"
    r"original\s+message\s+(follows|headers?)|message\s+(text|header)s?\s+follows|"
    r"returned\s+message\s+follows|header\s+of\s+the\s+original\s+message|"
    r"unsent\s+message\s+below|-----\s*original\s+message).*$",
    re.I | re.M,
)
_ENHANCED_RE = re.compile(r"(?<![\d.])([245])\.\d{1,3}\.\d{1,3}(?![\d.])")
# "550 5.1.1", "550-Mailbox", "<<< 421 Try later"; not phone numbers ("480-624-2500").
_REPLY_CODE_RE = re.compile(r"(?:^|[\s:(<>#])([245])\d\d(?=[ -](?:[A-Za-z<(]|[245]\.\d))", re.M)


def _report_text(ctx: _Ctx) -> str:
    """The report's own words: the loose text cut where a returned original starts."""
    text = ctx.loose_text[:30000]
    m = _ORIGINAL_MARKER.search(text)
    return text[: m.start()] if m else text


def _is_permanent(ctx: _Ctx, *, default: bool) -> bool:
    """Hard or soft, from the status codes the report quotes; ``default`` if it quotes none.

    Any 5.x.x / 5xx code makes it hard (except 5.2.2 mailbox full, see the dsn rule); only
    4.x.x / 4xx codes make it soft. Heuristic detectors such as flufl.bounce's Qmail put
    every address in "permanent", so their own opinion is only the default.
    """
    text = _report_text(ctx)
    classes = {
        m.group(1) for m in _ENHANCED_RE.finditer(text) if not m.group(0).startswith("5.2.2")
    } | {m.group(1) for m in _REPLY_CODE_RE.finditer(text)}
    classes.discard("2")
    if "5" in classes:
        return not _MAILBOX_FULL.search(text) or bool(_HARD_WORDS.search(text))
    if "4" in classes:
        return False
    return default


def _report_smell(ctx: _Ctx) -> str:
    """Why the message looks like a delivery report at all ('' if it does not).

    Heuristic bounce detectors (flufl.bounce's SimpleMatch, LLNL...) find "addresses" in
    any text, including a human's quoted bounce or a JSON blob. They only get a say when
    the message itself looks like a report. ``null sender`` is the weakest reason:
    auto-replies use a null envelope sender too.
    """
    if "smell" in ctx._cache:
        return str(ctx._cache["smell"])
    why = ""
    subject = ctx.subject
    if ctx.report_type:
        why = f"multipart/report ({ctx.report_type})"
    elif _DAEMON_LOCALS.match(ctx.from_local):
        why = f"sender {ctx.from_local}"
    elif _BOUNCE_SUBJECT.search(subject) and not _REPLY_PREFIX.match(subject):
        # "Fwd: Returned mail" is a person passing a bounce on: not a report itself
        why = f"subject {subject[:60]!r}"
    elif verp_outbox_id(ctx.msg, ctx.own_addresses) is not None:
        why = "sent to our VERP bounce address"
    elif m := _NDR_OPENING.search(ctx.opening):
        why = f"opens {m.group(0)!r}"
    elif ctx.h("from").strip() in ("", "<>", "< >") and ctx.hs("from"):
        why = "empty From"  # no person writes from <>; old qmail/Exim notices do
    elif _LIST_ADMIN_LOCALS.match(ctx.from_local) and _LIST_REJECT.search(
        ctx.subject + "\n" + ctx.opening
    ):
        why = f"list server {ctx.from_local}"
    elif ctx.h("return-path").strip() in ("<>", "< >"):
        why = "null sender"
    ctx._cache["smell"] = why
    return why


def _flufl_detectors() -> list[type]:
    try:
        from flufl.bounce._scan import _DETECTORS  # private, but the public scan stops
        # at the first detector that raises (Yale raises IndexError on mail without From)

        return list(_DETECTORS)
    except Exception:
        return []


def _flufl_results(ctx: _Ctx) -> Iterator[tuple[str, set[str], set[str]]]:
    """(detector, temporary, permanent) from each flufl.bounce detector, in its order."""
    msg = ctx.msg
    if len(ctx.raw) > _FLUFL_MAX_BYTES:
        # flufl.bounce's heuristic detectors scan every body line with dozens of patterns;
        # a bounce that returns a 10 MB original would take seconds. The report is at the
        # top, so they get the first part of the message.
        try:
            msg = email.message_from_bytes(ctx.raw[:_FLUFL_MAX_BYTES], policy=email.policy.default)
        except Exception:
            return
    detectors = _flufl_detectors()
    if not detectors:  # private list gone in a future flufl.bounce: use the public API
        try:
            from flufl.bounce import all_failures

            temporary, permanent = all_failures(msg)
        except Exception:
            return
        yield "all_failures", _clean(temporary, ctx), _clean(permanent, ctx)
        return
    for detector in detectors:
        try:
            temporary, permanent = detector().process(msg)
        except Exception:  # one detector tripping on broken mail must not hide the rest
            continue
        yield detector.__name__, _clean(temporary, ctx), _clean(permanent, ctx)


def _rule_flufl(ctx: _Ctx) -> Screening | None:
    smell = _report_smell(ctx)
    if not smell:
        return None
    for name, temporary, permanent in _flufl_results(ctx):
        # A detector whose only "addresses" were junk (JSON, our own address) has not
        # recognised anything: ask the next one, as flufl.bounce itself would.
        if not (temporary or permanent):
            continue
        failed = sorted(permanent or temporary)
        hard = bool(permanent) and _is_permanent(ctx, default=True)
        return _verdict(
            ctx,
            Kind.BOUNCE,
            "flufl",
            f"{'permanent' if hard else 'temporary'} failure for {', '.join(failed)}"
            f" (flufl.bounce: {name}; {smell})",
            failed,
            permanent=hard,
        )
    return None


def _clean(found: Collection[bytes | str], ctx: _Ctx) -> set[str]:
    """flufl.bounce's addresses, decoded, plausible, and not our own or the bounce's."""
    ignore = set(ctx.own_addresses) | set(_addresses(ctx.hs("to")))
    out: set[str] = set()
    for item in found:
        text = item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
        m = _ADDR_RE.fullmatch(text.strip().strip("<>").lower())
        if m and m.group(0) not in ignore:
            out.add(m.group(0))
    return out


_A = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"
# Where NDRs name the failed recipient: Postfix/qmail "<bob@x>:" and Exim's address on its
# own line, Sendmail "<bob@x>... User unknown", SMTP transcripts, DSN-like text lines,
# "Recipient address: bob@x" (Exchange, Notes, carriers), "could not be delivered to".
_NDR_ADDRESS = re.compile(
    rf"^[ \t]*<?({_A})>?[ \t]*(?::|$)|<({_A})>\.\.\.|RCPT\s+TO:\s*<?({_A})|"
    rf"(?:final|original)-recipient:\s*(?:rfc822\s*;)?\s*<?({_A})|"
    rf"(?<![\w-])(?:recipient|address|adresse|destinataire|empfänger|destinatario|to)"
    rf"(?:\s+address)?"
    rf"\s*:\s*<?({_A})|(?:delivered|failed|failure)\s+to:?\s*<?({_A})",
    re.I | re.M,
)


def _ndr_recipients(ctx: _Ctx, originals: list[Message]) -> list[str]:
    """Failed recipients of a free-text NDR: named in the report's own text (before the
    returned original), else the returned original's To/Cc.

    When both exist, the report's addresses are kept only if the original was sent to
    them, so a "please contact postmaster@..." line is not taken for a recipient.
    """
    skip = set(ctx.own_addresses) | set(_addresses(ctx.hs("from") + ctx.hs("to")))
    named: list[str] = []
    for m in _NDR_ADDRESS.finditer(_report_text(ctx)[:20000]):
        addr = next(g for g in m.groups() if g).lower().strip(".")
        local = addr.split("@", 1)[0]
        if addr in skip or _VERP_RE.match(addr) or _NOREPLY_LOCALS.match(local):
            continue
        if addr not in named:
            named.append(addr)
    sent_to: list[str] = []
    for original in originals[:1]:
        sent_to = [
            a
            for a in _addresses(_headers(original, "to") + _headers(original, "cc"))
            if a not in ctx.own_addresses
        ]
    if named and sent_to:
        both = [a for a in named if a in sent_to]
        return both or sent_to
    return named[:5] or sent_to


def _rule_ndr_text(ctx: _Ctx) -> Screening | None:
    smell = _report_smell(ctx)
    if not smell:
        return None
    subject = ctx.subject
    body = ctx.loose_text[:20000]
    sub_hit = _BOUNCE_SUBJECT.search(subject)
    if sub_hit and _REPLY_PREFIX.match(subject) and not smell.startswith("sender"):
        sub_hit = None
    opening_hit = _NDR_OPENING.search(ctx.opening)
    originals = list(_attached_messages(ctx.msg))
    if smell == "null sender":
        # Weakest smell: auto-replies share it. An attached original only counts when the
        # message says nothing an auto-reply would say.
        autoreplyish = _AUTOREPLY_SUBJECT.search(subject) or _OOO_BODY.search(ctx.opening)
        evidence: re.Match[str] | str | None = sub_hit or opening_hit
        if not evidence and originals and not autoreplyish:
            evidence = "returned original attached"
        body_hit = None
    else:
        body_hit = _BOUNCE_BODY.search(body)
        evidence = sub_hit or opening_hit or body_hit
        if not evidence and smell.startswith("list server"):
            evidence = _LIST_REJECT.search(subject + "\n" + ctx.opening)
        if not evidence and (originals or ctx.report_type == "delivery-status"):
            evidence = "returned original attached" if originals else "delivery-status report"
    if not evidence:
        return None
    failed = _ndr_recipients(ctx, originals)
    hit_text = evidence.group(0) if isinstance(evidence, re.Match) else str(evidence)
    # "Warning: message delayed 24 hours" decides by itself; MDaemon's "Warning: x - User
    # unknown!" does not. Otherwise the quoted status codes decide, then the wording.
    if _TEMPORARY.search(subject) and not _HARD_WORDS.search(subject):
        temporary = True
    else:
        temporary = not _is_permanent(
            ctx, default=not (_TEMPORARY.search(hit_text) or _TEMPORARY.search(ctx.opening))
        )
    return _verdict(
        ctx,
        Kind.BOUNCE,
        "ndr-text",
        f"{'temporary' if temporary else 'permanent'} failure, {hit_text!r} ({smell})"
        + (f" for {', '.join(failed)}" if failed else ""),
        failed,
        permanent=not temporary,
    )


def _rule_auto_submitted(ctx: _Ctx) -> Screening | None:
    for value in ctx.hs("auto-submitted"):
        token = re.split(r"[;\s(]", value.strip(), maxsplit=1)[0].lower()
        if token and token != "no":
            return _verdict(ctx, Kind.AUTOREPLY, "auto-submitted", f"Auto-Submitted {token}")
    return None


def _rule_autoreply_header(ctx: _Ctx) -> Screening | None:
    for name in (
        "x-autoreply",
        "x-autorespond",
        "x-autoresponder",
        "x-autoreply-from",
        "x-mail-autoreply",
        "x-cr-hashedpuzzle-autoreply",
        "x-vacation",
    ):
        for value in ctx.hs(name):
            if value.strip().lower() not in ("no", "false", "0"):
                return _verdict(ctx, Kind.AUTOREPLY, "autoreply-header", f"{name}: {value[:40]}")
    for name in ("x-autogenerated", "x-auto-generated"):
        for value in ctx.hs(name):
            if value.strip().lower() in ("reply", "yes", "true", "1"):
                return _verdict(ctx, Kind.AUTOREPLY, "autoreply-header", f"{name}: {value}")
    for name in ("precedence", "x-precedence"):
        for value in ctx.hs(name):
            if value.strip().lower().replace("-", "_") == "auto_reply":
                return _verdict(ctx, Kind.AUTOREPLY, "autoreply-header", f"{name}: {value}")
    mailer = ctx.h("x-mailer")
    if re.search(r"\bvacation\b", mailer, re.I):
        return _verdict(ctx, Kind.AUTOREPLY, "autoreply-header", f"X-Mailer: {mailer[:40]}")
    return None


def _strip_reply_prefixes(subject: str) -> str:
    for _ in range(5):
        m = _REPLY_PREFIX.match(subject)
        if not m:
            break
        subject = subject[m.end() :]
    return subject.strip()


def _rule_autoreply_subject(ctx: _Ctx) -> Screening | None:
    subject = ctx.subject
    m = _AUTOREPLY_SUBJECT.search(subject)
    if not m:
        return None
    # "RE: Automatic reply: x" / "AW: Abwesenheitsnotiz: x" is a person answering an
    # auto-reply. Robots that keep "Re:" put their marker elsewhere: AOL's "Re: x
    # (Automatic Response)", a help desk's "Re: [Ticket #1] x".
    rest = _strip_reply_prefixes(subject)
    if rest != subject.strip():
        again = _AUTOREPLY_SUBJECT.search(rest)
        if again and again.start() == 0 and not re.match(r"\s*\[", again.group(0)):
            return None
    return _verdict(ctx, Kind.AUTOREPLY, "autoreply-subject", f"subject {m.group(0).strip()!r}")


def _opening(text: str, limit: int) -> str:
    """The first ``limit`` characters of the new text, before any quote or signature."""
    lines: list[str] = []
    size = 0
    for line in text[: limit * 20].splitlines():
        stripped = line.strip()
        if stripped.startswith(">") or _QUOTE_HEADER.match(stripped):
            break
        lines.append(stripped)
        size += len(stripped) + 1
        if size > limit:
            break
    return " ".join(" ".join(lines).split())[:limit]


# Where quoted history starts in the major clients and languages (Gmail "On ... wrote:",
# Outlook's "-----Original Message-----" and "From:" blocks, German, French, Spanish,
# Dutch attributions) and where a signature starts ("-- ").
_QUOTE_HEADER = re.compile(
    r"^(-{2,}\s*(original|forwarded|ursprüngliche|message\s+d'origine|mensaje\s+original)|"
    r"on\s.{3,160}\swrote:?$|am\s.{3,120}\sschrieb|le\s.{3,120}\sa\sécrit|"
    r"el\s.{3,120}\sescribió|op\s.{3,120}\sschreef|(from|von|de|van|da)\s?:\s|"
    r"begin\s+forwarded\s+message|-- ?$|_{5,})",
    re.I,
)


_QUOTED = re.compile(r'"[^"\n]{0,200}"|“[^”\n]{0,200}”|„[^“\n]{0,200}“|«[^»\n]{0,200}»')


def _speaks_of_intro(ctx: _Ctx, text: str) -> bool:
    """Whether the text talks about the introduction the way a person answering would.

    Responders echo our subject ("Your message 'How did the introduction go?' has been
    waitlisted"), so the subject and anything in quotation marks are taken out first.
    """
    subject = _strip_reply_prefixes(ctx.subject)
    if len(subject) > 3:
        text = text.replace(subject, " ")
    return bool(_HUMAN_ANSWER.search(_QUOTED.sub(" ", text)))


def _body_verdict(ctx: _Ctx, limit: int, need_support: bool) -> str:
    """What in a short new text reads like an auto-reply ('' when nothing does)."""
    text = _opening(ctx.text, 4000)
    if not text or len(text) > limit or _speaks_of_intro(ctx, text):
        return ""
    strong = _AUTO_BODY_STRONG.search(text[:400])
    if strong:
        return f"short body says {strong.group(0)!r}"
    m = _OOO_BODY.search(text[:350])
    if not m:
        return ""
    support = _OOO_SUPPORT.search(text) or _AUTO_CUE.search(text)
    if need_support and not support:
        return ""
    # In a reply to us ("Re: ..."), a person may well write "I'm away until Monday";
    # only a responder adds "for urgent matters please contact...".
    cue = _AUTO_CUE.search(text)
    if need_support and _REPLY_PREFIX.match(ctx.subject) and not cue:
        return ""
    return f"short body opens {m.group(0)!r}" + (f", then {support.group(0)!r}" if support else "")


def _rule_autoreply_body(ctx: _Ctx) -> Screening | None:
    found = _body_verdict(ctx, 700, need_support=True)
    return _verdict(ctx, Kind.AUTOREPLY, "autoreply-body", found) if found else None


def _rule_autoreply_weak(ctx: _Ctx) -> Screening | None:
    signals: list[str] = []
    if ctx.hs("x-auto-response-suppress"):
        signals.append("X-Auto-Response-Suppress")
    for value in ctx.hs("precedence") + ctx.hs("x-precedence"):
        if value.strip().lower() in ("bulk", "junk", "list"):
            signals.append(f"Precedence: {value.strip().lower()}")
            break
    if _ACK_SUBJECT.search(ctx.subject):
        signals.append(f"subject {ctx.subject[:40]!r}")
    worded = False
    if len(signals) == 1 and _body_verdict(ctx, 1200, need_support=False):
        signals.append("out-of-office wording")
        worded = True
    if len(signals) >= 2:
        # Two headers alone are a guess (Outlook stamps X-Auto-Response-Suppress on ordinary
        # mail, gateways add Precedence); an ack subject or out-of-office words are a responder.
        guess = not worded and not _ACK_SUBJECT.search(ctx.subject)
        return _verdict(ctx, Kind.AUTOREPLY, "autoreply-weak", " + ".join(signals),
                        evidence=Evidence.HINT if guess else Evidence.AUTOMATIC)
    return None


def _rule_verp(ctx: _Ctx) -> Screening | None:
    outbox = verp_outbox_id(ctx.msg, ctx.own_addresses)
    if outbox is None:
        return None
    temporary = _TEMPORARY.search(ctx.subject)
    # Only bounces and auto-responders write to the envelope sender; auto-replies were
    # caught above, so this is an NDR we could not parse. Hard unless it says "delay".
    return _verdict(
        ctx,
        Kind.BOUNCE,
        "verp",
        "unparsed report sent to our bounce address",
        permanent=not temporary,
    )


def _rule_null_sender(ctx: _Ctx) -> Screening | None:
    paths = ctx.hs("return-path")
    if paths and paths[0].strip() in ("<>", "< >"):
        return _verdict(
            ctx,
            Kind.AUTOREPLY,
            "null-sender",
            "Return-Path <>: sent with a null envelope sender (RFC 3834 §3.3)",
        )
    return None


def _is_reply_to_us(ctx: _Ctx) -> bool:
    ids = re.findall(r"<[^<>\s]+>", " ".join(ctx.hs("in-reply-to") + ctx.hs("references")))
    return any(_is_minted(i, ctx.own_domain) for i in ids)


def _rule_list(ctx: _Ctx) -> Screening | None:
    for name in _LIST_HEADERS:
        values = ctx.hs(name)
        if values:
            return _verdict(ctx, Kind.IGNORED, "list", f"{name}: {values[0][:60]}",
                            evidence=Evidence.LIST)
    return None


def _rule_bulk_hint(ctx: _Ctx) -> Screening | None:
    # Each of these is stamped on personal mail too: Fastmail and Proton add Feedback-ID to
    # every message their users send, some providers and gateways add List-Unsubscribe or
    # Precedence. So they are hints: they set aside mail nothing else explains, never a
    # reply to us or a member's intro.
    for name in ("precedence", "x-precedence"):
        for value in ctx.hs(name):
            if value.strip().lower() in ("bulk", "list", "junk"):
                return _verdict(ctx, Kind.IGNORED, "bulk-hint", f"{name}: {value.strip()}",
                                evidence=Evidence.HINT)
    if ctx.hs("feedback-id"):
        return _verdict(ctx, Kind.IGNORED, "bulk-hint", "Feedback-ID (an ESP's or a "
                        "provider's stamp)", evidence=Evidence.HINT)
    if ctx.hs("list-unsubscribe") and not _is_reply_to_us(ctx):
        return _verdict(ctx, Kind.IGNORED, "bulk-hint", "List-Unsubscribe",
                        evidence=Evidence.HINT)
    return None


def _rule_noreply(ctx: _Ctx) -> Screening | None:
    local = ctx.from_local
    if local and _NOREPLY_LOCALS.match(local):
        # a no-reply or daemon address is a machine's by name: nobody there reads or writes
        return _verdict(ctx, Kind.IGNORED, "noreply-sender", f"From {local}: nobody reads replies")
    return None


RULES: tuple[Rule, ...] = (
    Rule("loop", Kind.IGNORED, "our own outgoing mail coming back", _rule_loop),
    Rule("arf", Kind.IGNORED, "abuse/complaint feedback reports", _rule_arf),
    Rule("unsubscribe", None, "client-sent unsubscribe requests pass", _rule_unsubscribe),
    Rule("mdn", Kind.IGNORED, "read receipts", _rule_mdn),
    Rule("challenge", Kind.AUTOREPLY, "challenge-response notices", _rule_challenge),
    Rule("dsn", Kind.BOUNCE, "RFC 3464 delivery-status fields", _rule_dsn),
    Rule("ses", Kind.BOUNCE, "Amazon SES JSON notifications", _rule_ses),
    Rule("x-failed-recipients", Kind.BOUNCE, "Exim's X-Failed-Recipients", _rule_x_failed),
    Rule("flufl", Kind.BOUNCE, "flufl.bounce detectors on report-looking mail", _rule_flufl),
    Rule("ndr-text", Kind.BOUNCE, "report-looking mail with failure wording", _rule_ndr_text),
    Rule("auto-submitted", Kind.AUTOREPLY, "RFC 3834 Auto-Submitted", _rule_auto_submitted),
    Rule("autoreply-header", Kind.AUTOREPLY, "vendor auto-reply headers", _rule_autoreply_header),
    Rule("autoreply-subject", Kind.AUTOREPLY, "auto-reply subjects", _rule_autoreply_subject),
    Rule("autoreply-body", Kind.AUTOREPLY, "short out-of-office bodies", _rule_autoreply_body),
    Rule("autoreply-weak", Kind.AUTOREPLY, "two weak auto-reply signals", _rule_autoreply_weak),
    Rule("verp", Kind.BOUNCE, "anything else sent to our VERP address", _rule_verp),
    Rule("null-sender", Kind.AUTOREPLY, "null envelope sender", _rule_null_sender),
    Rule("list", Kind.IGNORED, "mailing-list servers", _rule_list),
    Rule("bulk-hint", Kind.IGNORED, "headers bulk senders use (also on personal mail)",
         _rule_bulk_hint),
    Rule("noreply-sender", Kind.IGNORED, "no-reply and daemon senders", _rule_noreply),
)


def _reparse_if_headless(msg: Message, raw: bytes) -> Message:
    """Re-read ``raw`` without leading blank lines when they hid every header.

    Mail saved by some clients and exported from some archives starts with an empty
    line; the parser then takes the whole message, headers included, for a body.
    """
    try:
        if list(msg.raw_items()) or not isinstance(raw, bytes | bytearray):
            return msg
        stripped = bytes(raw).lstrip(b"\r\n\t ")
        if stripped != raw and re.match(rb"[!-9;-~]+:", stripped):
            return email.message_from_bytes(stripped, policy=email.policy.default)
    except Exception:
        return msg
    return msg


def screen(
    msg: EmailMessage,
    raw: bytes,
    *,
    own_addresses: Collection[str] = (),
    own_domain: str | None = None,
) -> Screening | None:
    """Recognise automatic mail; ``None`` means the message looks written by a person.

    ``msg`` is ``raw`` parsed with ``policy.default``; ``own_addresses`` are the service's
    addresses (lowercase or not) and ``own_domain`` the domain of the Message-IDs we mint.
    The first rule of :data:`RULES` that fires decides; see the module docstring for the
    table. Pure and total: a rule that raises on a broken message is skipped.
    """
    try:
        msg = _reparse_if_headless(msg, raw)
        ctx = _Ctx(
            msg=msg,
            raw=bytes(raw) if isinstance(raw, bytes | bytearray) else b"",
            own_addresses=frozenset(a.strip().lower() for a in own_addresses if a),
            own_domain=(own_domain or "").strip().lower() or None,
        )
    except Exception:
        return None
    weaker: Screening | None = None
    for rule in RULES:
        try:
            verdict = rule.check(ctx)
        except Exception:  # a rule tripping on a broken message must not stop the screen
            continue
        if verdict is _PASS:
            return weaker
        if isinstance(verdict, Screening):
            if verdict.evidence is Evidence.AUTOMATIC:
                return verdict
            # a list or hint verdict is kept, but a later rule may still prove the mail
            # automatic (a VERP bounce, a null sender): the strongest evidence wins
            if weaker is None or verdict.evidence > weaker.evidence:
                weaker = verdict
    return weaker
