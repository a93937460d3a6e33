"""Find the new text of a reply: what the person wrote, without history, signatures or our words.

Why our own rules rather than one library: `bench/reply_extraction.py` measures the candidates
(email-reply-parser, mail-parser-reply, quotequail, talon) on the shared corpus, and none gets
past roughly half of the paired samples; each misses whole families (non-English attributions,
Outlook header blocks without a separator, mobile signatures, HTML-only replies). So this module
is a line classifier in the spirit of discourse/email_reply_trimmer (MIT; its published test
pairs are the best benchmark we have), written from scratch for our needs, plus an HTML pre-pass
that cuts at the quote containers mail clients mark (the container names that quotequail and
talon also key on). Two needs are specific to Introloop and go beyond any library:

* Our own feedback request must never count as the party's words: any block that reproduces a
  text we sent (`sent_texts`), quoted or not, re-wrapped or not, is removed, because words in
  the request such as "great" or "failed" would otherwise steer the outcome.
* Inline-quoted lines are removed too (discourse keeps them, for forum posts): a quoted question
  of ours ("> Did the intro go well?") must not be read as the answer.

Everything is pure and never raises: on an internal error the result is empty text with method
"error", so the reply goes to a person instead of being judged on text that may hold quotes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from html.parser import HTMLParser

from service.core.body import html_body, html_to_text, text_body
from service.core.gateway import BANNER_RE, unwrap_links

__all__ = ["ReplyText", "extract_reply", "strip_reply_text"]

# Beyond this the message is not a reply a person typed: the new text sits at the top (or below
# a quote of ordinary size), and the line rules should not chew through megabytes of quoted
# history or adversarial input. Lines past the limit are treated as history and dropped.
_MAX_CHARS = 100_000
_MAX_LINES = 4_000
# Regexes never see more than this much of one line (pathological one-line bodies).
_MAX_LINE = 1_000


@dataclass(frozen=True, slots=True)
class ReplyText:
    """The new text of a reply, what decided it (for logs), and the whole decoded body.

    `method` reads "<source>:<steps>": source "plain" or "html"; steps joined by "+", in the
    order they applied: "html-<client>" (HTML cut at a client's quote container), "history"
    (cut at an attribution, separator or header block), "inline-quote", "quote", "sent-text"
    (lines reproducing a text we sent), "signature", "disclaimer", "banner",
    "mobile-signature", "contact-card", or "as-is" when nothing was removed. "empty" means
    no readable body; "error:<exception>" an internal failure (text is then "").
    """

    text: str
    method: str
    full_text: str


# --- line patterns ---------------------------------------------------------------------------
# Every pattern is applied to one line with leading whitespace removed, so none may backtrack
# badly: bounded repeats only.

_I = re.IGNORECASE

# "On <date>, <name> wrote:" and its translations. Each starts with the language's "On" and ends
# with its "wrote"; the line must also carry a digit or an address (dates and emails are what
# separates "On Tue, 3 Apr 2012, Bob wrote:" from a sentence such as "On reflection he said:").
_ATTRIBUTION_RES = [
    re.compile(p, _I)
    for p in (
        r"^-*\s*(?:on|at)\s.{3,300}?\b(?:wrote|writes|said|says)\s*:?\s*-*$",  # en (Gmail, Apple)
        r"^in message\s.{3,300}?\bwrites\s*:?$",  # en (old Usenet style)
        r"^el\s.{3,300}?\bescribi[oó]\s*:?$",  # es "El lun, 2 abr 2012, Ana escribió:"
        r"^am\s.{3,300}?\b(?:schrieb|geschrieben|schrieben)\b.{0,200}?:$",  # de "Am … schrieb …:"
        r"^le\s.{3,300}?\b(?:a\s+[ée]crit|nous\s+a\s+dit)\s*:?$",  # fr "Le … a écrit :"
        r"^op\s.{3,300}?\b(?:schreef|het\s+volgende\s+geschreven)\b.{0,200}?:?$",  # nl
        r"^em\s.{3,300}?\bescreveu\s*:?$",  # pt "Em … escreveu:"
        r"^il\s.{3,300}?\bha\s+scritto\s*:?$",  # it
        r"^(?:den|p[aå])?\s?.{3,300}?\b(?:skrev|kirjoitti)\b.{0,200}?:$",  # sv/no/da/fi
        r"^(?:dnia|d[nň]a)\s.{3,300}?\bnapisa[lł](?:\(a\))?\s*:?$",  # pl/sk
        r"^.{3,300}?\bnapisa[lł]\(a\)\s*:$",  # pl without "Dnia"
        r"^.{3,300}?(?:написал|написала|написал\(а\)|написав|пише)\s*:?$",  # ru/uk
        r"^.{0,200}?(?:在|于).{3,200}?写道\s*[:：]?$",  # zh
        r"^\d{4}年\d{1,2}月\d{1,2}日.{0,200}?[:：]$",  # ja
    )
]
# "Max <max@example.org> schrieb am Fr., 28. Apr. 2017 um 11:53 Uhr:" (name first, date after).
_ATTRIBUTION_RES.append(
    re.compile(
        r"^.{1,200}?\b(?:wrote|schrieb|escribi[oó]|a\s+[ée]crit|schreef|escreveu|ha\s+scritto)"
        r"\s+(?:on|am|el|le|op|em|il)\b.{3,120}:$",
        _I,
    )
)
# Every attribution pattern ends in a colon, an address or one of these verbs: a cheap test
# that spares the full patterns on ordinary lines.
_ATTRIBUTION_HINT_RE = re.compile(
    r"[:：>]\s*-*$|wrote|writes|said|says|escrib|schreef|geschreven|schrieb|crit\b|escreveu"
    r"|scritto|skrev|kirjoitti|napisa|написа|пише|写道|GMT[+-]\d",
    _I,
)
# A line that can begin a wrapped attribution.
_OPENER_RE = re.compile(r"^-*\s*(?:on|at|am|le|el|op|em|il|den|dnia|d[nň]a)\s", _I)
# The same verbs without a date or address ("Jane Doe wrote:", "Jane <j@x.org> schrieb:").
# Only trusted when a quote block follows (see `_weak_attribution`).
_WROTE_END_RE = re.compile(
    r"(?:wrote|writes|schrieb|escribi[oó]|a\s+[ée]crit|schreef|escreveu|ha\s+scritto|skrev"
    r"|napisa[lł](?:\(a\))?|написал(?:\(а\)|а)?|написав|пише|írta|kirjoitti|yazdı)\s*:\s*-*$",
    _I,
)
# "2015-10-18 0:17 GMT+03:00 Matt <m@x.org>:" (Gmail in some locales), "2013/10/2 Bob <b@x.org>",
# "вт, 5 янв. 2016 г. в 23:39, Erlend <e@x.org>:": a date-ish line that ends with an address.
_DATE_ADDRESS_RE = re.compile(r"^.{0,120}?\d.{0,120}?<[^@<>\s]{1,64}@[^@<>\s]{1,255}>\s*:?$")
_ISO_DATE_NAME_RE = re.compile(r"^20\d\d-\d\d-\d\d \d\d?:\d\d GMT[+-]\d\d:\d\d [\w .'-]{1,80}:?$")
# "Someone <someone@example.org> wrote:" / "X via Discourse Meta wrote:" (no date at all).
_ADDRESS_OR_VIA_RE = re.compile(r"@[\w.-]+\.\w{2,}|\bvia\b", _I)

_SEPARATOR_RE = re.compile(
    r"^[>*\s]*-{2,}\s*\*?\s*(?:original message|forwarded message|reply message|"
    r"urspr[üu]ngliche nachricht|weitergeleitete nachricht|original-nachricht|"
    r"message d'origine|message transf[ée]r[ée]|mensaje original|mensaje reenviado|"
    r"mensagem original|mensagem encaminhada|oorspronkelijk bericht|doorgestuurd bericht|"
    r"origineel bericht|messaggio originale|messaggio inoltrato|originalmeddelande|"
    r"vidarebefordrat meddelande|oprindelig meddelelse|opprinnelig melding|"
    r"wiadomo[sś][cć] oryginalna|исходное сообщение|пересылаемое сообщение|原始邮件|"
    r"転送メッセージ|元のメッセージ)\s*\*?\s*-{2,}\s*\*?$",
    _I,
)
_FORWARD_INTRO_RE = re.compile(
    r"^(?:begin forwarded message|anfang der weitergeleiteten (?:e-mail|nachricht)|"
    r"d[ée]but du message (?:r[ée]exp[ée]di[ée]|transf[ée]r[ée])|"
    r"inicio del mensaje reenviado|in[ií]cio da mensagem (?:reencaminhada|encaminhada)|"
    r"begin doorgestuurd bericht|inizio messaggio inoltrato)\s*:?$",
    _I,
)

# Header names of a quoted message's header block, per language. A block needs two different
# names within a few lines, one of them naming the sender or the date: "To: all of you" alone,
# or a line that starts with "Subject:", is ordinary text.
_FROM_KEYS = {
    "from", "von", "de", "van", "da", "från", "fra", "od", "от", "发件人", "寄件者", "差出人",
    "expéditeur", "remetente", "afzender", "mittente", "absender",
}  # fmt: skip
_DATE_KEYS = {
    "sent", "date", "gesendet", "datum", "envoyé", "enviado", "enviada", "enviada em",
    "enviado el", "verzonden", "fecha", "data", "inviato", "skickat", "sendt", "wysłano",
    "отправлено", "дата", "发送时间", "日期", "送信日時", "date d'envoi", "verstuurd",
}  # fmt: skip
_OTHER_KEYS = {
    "to", "cc", "bcc", "subject", "reply-to", "an", "betreff", "kopie", "à", "objet", "a",
    "para", "asunto", "assunto", "aan", "onderwerp", "oggetto", "till", "ämne", "til", "emne",
    "do", "temat", "dw", "кому", "тема", "копия", "收件人", "主题", "抄送", "件名", "宛先",
    "destinataire", "cc/cci", "cco", "répondre à", "antwort an", "importance", "priorität",
    "attachments", "anlagen", "pièces jointes",
}  # fmt: skip
_HEADER_RE = re.compile(r"^[>\s]*[*_]{0,2}\s*([^\W\d_][\w' /-]{0,18}?)\s*[*_]{0,2}\s*[:：]", _I)

_QUOTE_RE = re.compile(r"^\s{0,3}>")

# Lines that are nothing but a rule: "--", "-- ", "__________", "*****", "=====", "ᐧ".
_DELIMITER_RE = re.compile(r"^\s*(?:[-_=+~#*ᐧ—–•]\s?){2,}\s*$|^\s*[ᐧ—–]\s*$")
_SIG_DASHES_RE = re.compile(r"^(?:--|—|–)\s*$")  # RFC 3676 "-- " and its mangled forms

# Mobile and app signatures: a whole line that says where the mail was written. They must not
# swallow prose ("The notification was sent from my iPhone app to all users." is text), so they
# are anchored at the line start and short.
_MOBILE_SIG_RES = [
    re.compile(p, _I)
    for p in (
        r"^[(<\[]*\s*sent\s+(?:from|via|with|using|by|on)\s+.{1,80}$",
        r"^[(<\[]*\s*sent\s+from\s+(?:my|a|an|the)\s+.{1,80}$",
        r"^get\s+(?:outlook|the\s+outlook\s+app)\s+for\s+\S.{0,80}$",
        r"^(?:get|download)\s+outlook\s+for\s+(?:ios|android).{0,80}$",
        r"^\w{1,20}\s+from\s+mobile\.?$",
        r"^from\s+my\s+(?:iphone|ipad|ipod|android|blackberry|mobile|phone|galaxy|samsung|pixel)"
        r".{0,30}$",
        r"^(?:diese\s+nachricht\s+wurde\s+)?von\s+meinem\s+.{1,60}\s+gesendet\.?$",
        r"^gesendet\s+(?:von|mit|vom|über|ueber)\s+(?:meinem|meiner|der|dem|einem)?\s*.{1,60}$",
        r"^envoy[ée]\s+(?:de|depuis|à\s+partir\s+de)\s+(?:mon|ma|yahoo|l'application|outlook)"
        r".{0,60}$",
        r"^enviado\s+(?:desde|do|de|a\s+partir\s+do)\s+(?:mi|meu|o\s+meu|yahoo|outlook).{0,60}$",
        r"^verzonden\s+(?:vanaf|met|van(?:af)?|via)\s+.{1,60}$",
        r"^verstuurd\s+(?:vanaf|met|van|via)\s+.{1,60}$",
        r"^inviato\s+da\s+.{1,60}$",
        r"^(?:sendt|skickat)\s+fr[aå]n?\s+(?:min|mitt|my)\s+.{1,60}$",
        r"^wys[lł]ane\s+z\s+.{1,60}$",
        r"^отправлено\s+(?:с|из)\s+.{1,60}$",
        r"^(?:從我的|发自我的|来自我的).{1,30}$",
        r"^.{0,20}iphoneから送信$",
    )
]
_SIG_TAIL_RE = re.compile(
    r"excuse|typo|brevity|brief|pardon|sorry|disculp|errores|entschuldig|tippfehler|k[üu]rze"
    r"|fautes|excusez|desculp|erros|excuus|typefout|autocorrect"
    # "Sent via the Samsung Galaxy S23, an AT&T 5G smartphone"
    r"|^(?:an?|the|my)\b.{0,40}\b(?:smartphone|phone|tablet|device)\.?$",
    _I,
)
_MARKDOWN_LINK_RE = re.compile(r"\[([^\]\n]{0,200})\]\([^)\n]{0,500}\)")

# Legal disclaimers and confidentiality notices: a paragraph that opens like this ends the
# reply (they are appended by servers and always come last).
_DISCLAIMER_RE = re.compile(
    r"^[*\s]*(?:"
    r"(?:confidentiality|privileged|legal|privacy|important)\s+(?:notice|note|statement|"
    r"warning|information)|disclaimer\b|confidential(?:ity)?\s*:|"
    r"this\s+(?:e-?mail|message|communication|transmission)\b.{0,120}?\b(?:confidential|"
    r"privileged|intended\s+(?:solely|only|for)|proprietary)|"
    r"the\s+information\s+(?:contained\s+)?in\s+this\s+(?:e-?mail|message|communication)|"
    r"if\s+you\s+(?:are\s+not\s+the\s+intended|have\s+received\s+this\s+(?:e-?mail|message)"
    r"\s+in\s+error)|please\s+consider\s+the\s+environment|"
    r"diese\s+(?:e-?mail|nachricht)\b.{0,120}?\b(?:vertraulich|rechtlich\s+gesch[üu]tzt)|"
    r"vertraulichkeitshinweis|haftungsausschluss|wenn\s+sie\s+nicht\s+der\s+(?:richtige|"
    r"beabsichtigte)\s+(?:adressat|empf[äa]nger)|"
    r"ce\s+(?:message|courriel|e-?mail)\b.{0,120}?\bconfidenti|avis\s+de\s+confidentialit[ée]|"
    r"si\s+vous\s+n['’][êe]tes\s+pas\s+(?:le|la)\s+destinataire|"
    r"este\s+(?:mensaje|correo)\b.{0,120}?\bconfidencial|aviso\s+(?:legal|de\s+confidencialidad)|"
    r"si\s+usted\s+no\s+es\s+el\s+destinatario|"
    r"dit\s+(?:e-?mail(?:bericht)?|bericht)\b.{0,120}?\bvertrouwelijk|"
    r"indien\s+u\s+niet\s+de\s+(?:geadresseerde|bedoelde\s+ontvanger)|"
    r"esta\s+mensagem\b.{0,120}?\bconfidencia|aviso\s+de\s+confidencialidade|"
    r"se\s+voc[êe]\s+n[ãa]o\s+(?:[ée]|for)\s+o\s+destinat[áa]rio"
    r")",
    _I,
)
# "CAUTION: This email originated from outside of the organization…" and friends: gateway
# banners at the TOP of a message (service/core/gateway.py). Only that paragraph is dropped.
_BANNER_RE = BANNER_RE
_INLINE_HINT_RE = re.compile(
    r"\b(?:(?:see|find)\s+(?:my\s+)?(?:answers|comments|responses|replies|notes)\s+"
    r"(?:inline|below|in\s+(?:line|red|blue))|answers?\s+inline|inline\s+below|"
    r"antworten\s+(?:im\s+text|unten|inline)|r[ée]ponses?\s+ci-dessous|"
    r"respuestas?\s+(?:abajo|en\s+l[ií]nea)|antwoorden\s+(?:hieronder|inline))\b",
    _I,
)

# Lines of a contact card: an address, a phone number, a web address, a labelled number.
_CONTACT_RE = re.compile(
    r"[\w.+-]+@[\w-]+\.[\w.-]+|(?:\+|\(\d)[\d ()./-]{6,}\d|\d{3}[ .-]\d{3,4}[ .-]\d{3,4}"
    r"|\bwww\.|https?://|^(?:tel|phone|mobile|mobil|cell|fax|t|m|f|e|p)\s*[.:]",
    _I,
)
_WORD_RE = re.compile(r"\w+")
_INVISIBLE_RE = re.compile(r"[\u200b\u200c\u200d\u2060\ufeff\u00ad]")

# Line kinds
_EMPTY, _TEXT, _QUOTE, _MARKER, _DELIM, _MOBILE = "e", "t", "q", "m", "d", "s"
# A line reproducing a text we sent. It is dropped like a quoted line, and it counts as one
# when deciding what an attribution introduces (our request below "On … wrote:", unquoted).
_SENT = "x"
_QUOTED = frozenset({_QUOTE, _SENT})


def _tokens(text: str) -> list[str]:
    return _WORD_RE.findall(text.lower())


def _unquote(line: str) -> str:
    """The line without its leading "> > " quote markers."""
    return re.sub(r"^\s*(?:>\s?)+", "", line)


def _is_mobile_sig(line: str) -> bool:
    plain = _MARKDOWN_LINK_RE.sub(r"\1", line.strip())[:_MAX_LINE]
    if not plain or len(plain) > 120 or not any(r.match(plain) for r in _MOBILE_SIG_RES):
        return False
    # "Sent from my cell, please excuse any typos." is a signature; "Sent from my desk, is much
    # easier than my mobile phone." is a sentence. After the first clause only an apology for
    # brevity/typos, more about the device, or a link may follow.
    clause_end = re.search(r"[,;]|\.\s", plain)
    tail = plain[clause_end.end() :].strip() if clause_end else ""
    return not tail or bool(_SIG_TAIL_RE.search(tail)) or tail.startswith(("<", "http", "("))


# Sign-offs in five languages ("Best,", "Mit freundlichen Grüßen", "Un saludo"): a line that
# is only one (maybe with a name) closes the letter; what follows is a signature block.
NAME_WORD = r"[A-ZÀ-ÖØ-Þ][\w'.-]*"
SIGNOFF = (r"(?:best(?: wishes| regards)?|kind(?:est)? regards|warm(?:est)? regards|regards|"
            r"many thanks|thanks(?: again| a lot| so much)?|thank you(?: again| so much)?|"
            r"cheers|all the best|sincerely|yours(?: sincerely| truly)?|talk soon|speak soon|"
            r"take care|br|rgds|thx|ciao|"
            r"(?:beste|viele|liebe|freundliche|herzliche|sonnige) grü(?:ß|ss)e|"
            r"(?:beste|viele|liebe|freundliche|herzliche) gruesse|mit (?:den )?(?:besten|"
            r"freundlichen|herzlichen) grü(?:ß|ss)en|mfg|lg|vg|gruß|gruss|grüße|danke(?: dir| "
            r"ihnen| schön| sehr)?|vielen dank|"
            r"cordialement|bien cordialement|bien à (?:vous|toi)|belle journée|bonne (?:journée|"
            r"soirée|fin de journée)|amitiés|merci(?: encore| beaucoup| bien)?|à bientôt|"
            r"salutations|sincères salutations|"
            r"saludos(?: cordiales)?|un saludo(?: cordial)?|atentamente|un abrazo|abrazos|"
            r"gracias|muchas gracias|un cordial saludo|besos|"
            r"met vriendelijke groet(?:en)?|vriendelijke groet(?:en)?|hartelijke groet(?:en)?|"
            r"groet(?:en|jes)?|mvg|gr|bedankt|dank je wel|dank u wel|dankjewel|fijne dag|"
            r"cdlt|bien à vous|encore merci(?: et à bientôt)?|reciba un (?:cordial )?saludo|"
            r"recibe un (?:cordial )?saludo|quedo a (?:su|tu) disposición|hasta pronto|"
            r"met hartelijke groet|hartelijke groeten|liebe grüße|lg|schöne grüße|"
            r"mit besten grüßen|gruß aus \w+|greetings)")
# A sign-off line: the phrase, maybe punctuation, maybe a name ("Thanks, Jürgen").
# A sign-off line: the phrase, maybe punctuation, maybe a name ("Thanks, Jürgen").
# (the phrase is matched in any case, the name only capitalised: "Thanks for checking in."
# is a sentence, "Thanks, Jürgen" a sign-off)
SIGNOFF_LINE = re.compile(
    rf"^\s*(?i:{SIGNOFF})\b[ \t]*[,.!:;-]*(?:[ \t]*(?:{NAME_WORD}[ \t]*){{1,3}})?[ \t]*[,.!]?\s*$")


_POSTSCRIPT_RE = re.compile(r"^\s*(?:p\.?\s?s\.?|pd|n\.?b\.?)\s*[:.,-]", re.I)

# For service/core/quote.py, which cuts the answer out of the new text with the same notions.
is_mobile_signature = _is_mobile_sig
CONTACT_RE = _CONTACT_RE
DISCLAIMER_RE = _DISCLAIMER_RE


def _header_key(line: str) -> str | None:
    """The header name when `line` looks like "From: …" / "*Von:* …" / "De : …", else None."""
    m = _HEADER_RE.match(line[:_MAX_LINE])
    if not m:
        return None
    key = " ".join(m.group(1).lower().split())
    if key in _FROM_KEYS or key in _DATE_KEYS or key in _OTHER_KEYS:
        return key
    return None


def _attribution_at(lines: list[str], i: int) -> int:
    """If an attribution starts at line i, return how many lines it spans, else 0.

    Clients wrap long attributions, sometimes leaving the pieces of the address on lines of
    their own that even look quoted ("On Thu, 31 Mar 2016 at 11:16 Some One\n\n<\n
    mailto:some.one@foo.bar\n> wrote:"), so up to six lines are joined and tested together,
    but only from a first line that can open an attribution (a date or an address on it).
    """
    first = lines[i].strip()
    if not first or _QUOTE_RE.match(lines[i]) or len(first) > 400:
        return 0
    if _is_attribution(first):
        return 1
    if len(first) > 200 or not (_OPENER_RE.match(first) or re.search(r"\d|@", first)):
        return 0
    first_opens = bool(_OPENER_RE.match(first.lstrip("-–—* ")))
    joined = first
    span = 0
    for j in range(i + 1, min(len(lines), i + 6)):
        nxt = lines[j].strip()
        if not nxt:
            continue
        if len(nxt) > 200 or (_QUOTE_RE.match(lines[j]) and len(nxt) > 30):
            break  # real quoted text, not the tail of a wrapped address ("> wrote:")
        piece = re.sub(r"^[>\s-]+", "", nxt)
        if _OPENER_RE.match(piece) and (
            _is_attribution(piece, strong_only=True)
            or (not first_opens and re.search(r"\d", piece))
        ):
            break  # the attribution starts further down: line i is text
        joined = joined + " " + piece
        tidy = re.sub(r"<\s+", "<", re.sub(r"\s+>", ">", joined))
        if _is_attribution(tidy, strong_only=True):
            # Keep the longest match: "…Some One <mailto:one@x.org>" already looks complete,
            # but the "> wrote:" on the next line belongs to it too.
            span = j - i + 1
    return span


def _is_attribution(line: str, *, strong_only: bool = False) -> bool:
    # Zimbra and some webmails prefix the attribution with "- " or wrap it in bold "*…*".
    text = line.strip().lstrip("-–—*_ ").rstrip("*_ ")
    if not text or not _ATTRIBUTION_HINT_RE.search(text):
        return False
    has_evidence = bool(re.search(r"\d|@", text))
    if has_evidence and any(r.match(text) for r in _ATTRIBUTION_RES):
        return True
    if _DATE_ADDRESS_RE.match(text) or _ISO_DATE_NAME_RE.match(text):
        return True
    if strong_only:
        return False
    # "Jane Doe <jane@example.org> wrote:" and "codinghorror via Discourse Meta wrote:"
    return bool(_WROTE_END_RE.search(text) and _ADDRESS_OR_VIA_RE.search(text))


def _weak_attribution(line: str) -> bool:
    """A short line that ends in "wrote:" (in any of our languages), without date or address."""
    text = line.strip()
    return 0 < len(text) <= 200 and bool(_WROTE_END_RE.search(text))


def _header_block_at(lines: list[str], i: int) -> int:
    """If a quoted message's header block starts at line i, return its length, else 0.

    Outlook writes "From: … / Sent: … / To: … / Subject: …" (translated, sometimes bold, in
    any order, values sometimes wrapped onto the next line); two known names within a few
    lines, one naming the sender or the date, make a block.
    """
    key = _header_key(lines[i])
    if key is None or _QUOTE_RE.match(lines[i]):
        return 0
    keys = {key}
    last = i
    j = i + 1
    gap = 0
    while j < len(lines) and j <= i + 12:
        if _QUOTE_RE.match(lines[j]):
            break
        k = _header_key(lines[j])
        if k is not None:
            keys.add(k)
            last = j
            gap = 0
        elif lines[j].strip():
            gap += 1  # a wrapped value ("To: a@x.org;\n b@y.org")
            if gap > 2:
                break
        j += 1
    if len(keys) < 2 or not (keys & (_FROM_KEYS | _DATE_KEYS)):
        return 0
    if not (keys & _FROM_KEYS) and len(keys) < 3:
        return 0
    return last - i + 1


@dataclass
class _Lines:
    lines: list[str]
    kinds: list[str]
    marker_span: dict[int, int]


def _classify(lines: list[str], sent: Sequence[bool] = ()) -> _Lines:
    kinds: list[str] = []
    spans: dict[int, int] = {}
    in_fence = False
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        # Markdown code fences: what is inside is text, whatever it looks like ("####").
        if stripped.startswith("```"):
            in_fence = not in_fence
            kinds.append(_TEXT)
            i += 1
            continue
        if in_fence:
            kinds.append(_TEXT if stripped else _EMPTY)
            i += 1
            continue
        if not stripped:
            kinds.append(_EMPTY)
            i += 1
            continue
        if i < len(sent) and sent[i]:
            kinds.append(_SENT)
            i += 1
            continue
        if _QUOTE_RE.match(line):
            kinds.append(_QUOTE)
            i += 1
            continue
        span = _attribution_at(lines, i)
        if not span and (_SEPARATOR_RE.match(stripped) or _FORWARD_INTRO_RE.match(stripped)):
            span = 1
        if not span:
            span = _header_block_at(lines, i)
        if not span and _weak_attribution(stripped):
            nxt = next((k for k in range(i + 1, min(len(lines), i + 4)) if lines[k].strip()), None)
            if nxt is not None and (_QUOTE_RE.match(lines[nxt]) or (nxt < len(sent) and sent[nxt])):
                span = 1
        if span:
            spans[i] = span
            kinds.extend([_MARKER] * span)
            i += span
            continue
        if _DELIMITER_RE.match(line):
            kinds.append(_DELIM)
        elif _is_mobile_sig(stripped):
            kinds.append(_MOBILE)
        else:
            kinds.append(_TEXT)
        i += 1
    return _Lines(lines, kinds, spans)


# --- removing our own request ----------------------------------------------------------------


def _sent_text_lines(lines: list[str], sent_texts: Sequence[str]) -> list[bool]:
    """Flag every run of lines that reproduces one of `sent_texts`.

    Lines are compared as word sequences (lowercased, quote markers and punctuation ignored),
    so a copy that a client re-wrapped, "> "-quoted or converted from our HTML part still
    matches. A run must be long enough that a person's own short answer ("It went well")
    which happens to repeat words of ours is never taken for a copy; a second, fuzzier pass
    flags paragraphs that are mostly our word trigrams (the HTML part of our request, quoted
    by an HTML-only client, words slightly different from the text part). Flagged lines are
    classified like quoted lines, so the structure around them still reads as a reply.
    """
    seqs: list[tuple[str, int]] = []
    trigrams: set[tuple[str, str, str]] = set()
    for sent in sent_texts:
        if not isinstance(sent, str):
            continue
        toks = _tokens(sent)
        if len(toks) < 2:
            continue
        seqs.append((" " + " ".join(toks) + " ", min(6, len(toks))))
        trigrams.update(zip(toks, toks[1:], toks[2:], strict=False))
    if not seqs:
        return []

    line_toks = [_tokens(_unquote(line)) for line in lines]
    remove = [False] * len(lines)
    i = 0
    while i < len(lines):
        if not line_toks[i]:
            i += 1
            continue
        run: list[str] = []
        end = None
        need = 0
        j = i
        while j < len(lines):
            if not line_toks[j]:
                j += 1
                continue
            cand = run + line_toks[j]
            probe = " " + " ".join(cand) + " "
            hit = [n for s, n in seqs if probe in s]
            if not hit:
                break
            run, end, need = cand, j, min(hit)
            j += 1
        if end is not None and len(run) >= need:
            for k in range(i, end + 1):
                remove[k] = True
            i = end + 1
        else:
            i += 1

    # Fuzzy pass, paragraph by paragraph.
    if trigrams:
        start = 0
        while start < len(lines):
            if not lines[start].strip() or remove[start]:
                start += 1
                continue
            end = start
            while end + 1 < len(lines) and lines[end + 1].strip() and not remove[end + 1]:
                end += 1
            toks = [t for k in range(start, end + 1) for t in line_toks[k]]
            grams = list(zip(toks, toks[1:], toks[2:], strict=False))
            if len(toks) >= 8 and grams:
                share = sum(g in trigrams for g in grams) / len(grams)
                if share >= 0.7:
                    for k in range(start, end + 1):
                        remove[k] = True
            start = end + 1

    return remove


# --- the text rules --------------------------------------------------------------------------


def _prose(line: str) -> bool:
    """A sentence a person wrote, as opposed to a signature line (name, title, phone, URL)."""
    words = line.split()
    return len(words) >= 6 and line.rstrip().endswith((".", "!", "?", ":"))


def _strip_lines(lines: list[str], sent: Sequence[bool], steps: list[str]) -> list[str]:
    info = _classify(lines, sent)
    kinds = info.kinds
    n = len(lines)
    inline_hint = False

    keep: list[int] = []
    seen_text = False
    i = 0
    while i < n:
        kind = kinds[i]
        if kind == _MARKER:
            span = info.marker_span.get(i, 1)
            end = i + span
            nxt = next((k for k in range(end, n) if kinds[k] != _EMPTY), None)
            quoted_next = nxt is not None and kinds[nxt] in _QUOTED
            if quoted_next and (not seen_text or inline_hint or _interleaved(kinds, nxt)):
                # An attribution over a quote block that the writer answers below or inline.
                steps.append("inline-quote")
                i = end
                continue
            steps.append("history")
            break
        if kind in _QUOTED:
            steps.append("quote" if kind == _QUOTE else "sent-text")
            i += 1
            continue
        if kind == _TEXT:
            seen_text = True
            if _INLINE_HINT_RE.search(lines[i][:_MAX_LINE]):
                inline_hint = True
        # Removing a quote block leaves the blank lines around it; keep one.
        if not (kind == _EMPTY and keep and kinds[keep[-1]] == _EMPTY and keep[-1] != i - 1):
            keep.append(i)
        i += 1

    out = [lines[k] for k in keep]
    out_kinds = [kinds[k] for k in keep]
    return _strip_signatures(out, out_kinds, steps)


def _interleaved(kinds: list[str], start: int) -> bool:
    """True when text lines sit between quote blocks after `start` (answers written inline)."""
    state = 0  # 0: in first quote block, 1: saw text after it
    for kind in kinds[start:]:
        if kind == _MARKER:
            return False
        if kind in _QUOTED:
            if state == 1:
                return True
        elif kind == _TEXT:
            state = 1
    return False


def _strip_signatures(lines: list[str], kinds: list[str], steps: list[str]) -> list[str]:
    n = len(lines)
    # 1. Gateway banners on top ("CAUTION: This email originated from outside…").
    # Two gateways in a row stack their banners ("[EXTERNAL]", then "CAUTION: …"); three
    # paragraphs at most, so a reply that merely starts with "Attention: …" keeps the rest.
    for _ in range(3):
        first = next((k for k in range(n) if lines[k].strip()), None)
        if first is None or not _BANNER_RE.match(lines[first][:_MAX_LINE]):
            break
        end = first
        while end < n and lines[end].strip():
            end += 1
        lines, kinds = lines[end:], kinds[end:]
        n = len(lines)
        steps.append("banner")

    cut = n
    has_text_before = False
    for k in range(n):
        if k and kinds[k - 1] == _TEXT:
            has_text_before = True
        line = lines[k].strip()
        # 2. "-- " signature separator (RFC 3676), and its stripped variants.
        if kinds[k] == _DELIM and _SIG_DASHES_RE.match(line) and has_text_before:
            cut = k
            steps.append("signature")
            break
        # 3. Other rules ("______", "*****") end the reply when what follows is a signature,
        # not more prose (people do separate parts of a reply with a rule).
        if kinds[k] == _DELIM and has_text_before:
            tail = [lines[m] for m in range(k + 1, n) if kinds[m] == _TEXT]
            if not any(_prose(t) for t in tail) or _disclaimer_follows(lines, k + 1):
                cut = k
                steps.append("signature")
                break
        # 4. Legal disclaimers: from the paragraph that opens like one to the end.
        if (
            kinds[k] == _TEXT
            and has_text_before
            and (k == 0 or not lines[k - 1].strip() or kinds[k - 1] == _DELIM)
            and _DISCLAIMER_RE.match(line[:_MAX_LINE])
        ):
            cut = k
            steps.append("disclaimer")
            break
    lines, kinds = lines[:cut], kinds[:cut]

    # 5. "Sent from my iPhone" and friends: drop those lines wherever they are.
    if _MOBILE in kinds:
        steps.append("mobile-signature")
        pairs = [(ln, kd) for ln, kd in zip(lines, kinds, strict=True) if kd != _MOBILE]
        lines = [ln for ln, _ in pairs]
        kinds = [kd for _, kd in pairs]

    # 6. Trailing rules and blank lines left behind by the cuts.
    while lines and (not lines[-1].strip() or kinds[-1] == _DELIM):
        lines.pop()
        kinds.pop()

    # 7. A contact card as the last paragraph (name, title, phone, address, URL) without a
    # "-- " above it. Company names and titles are not answers, and some contain words a
    # classifier would weigh ("Great Lakes Partners").
    start = len(lines)
    while start > 0 and lines[start - 1].strip():
        start -= 1
    card = lines[start:]
    if (
        start > 0
        and 2 <= len(card) <= 8
        and any(kinds[m] == _TEXT for m in range(start))
        and all(len(line.strip()) <= 80 and not _prose(line)
                # a wrapped sentence has many words; a signature line few, or pipes
                and ("|" in line or len(line.split()) <= 8) for line in card)
        and sum(bool(_CONTACT_RE.search(line)) for line in card) >= max(1, len(card) // 3)
    ):
        steps.append("contact-card")
        lines = lines[:start]
        while lines and not lines[-1].strip():
            lines.pop()

    # 8. A sign-off ("Best,", "Mit freundlichen Grüßen") and the name under it close the
    # letter: below them come title, company, address and phone, which are nobody's answer.
    # Kept when what follows is prose again (a P.S.).
    seen = False
    for k, line in enumerate(lines):
        text = line.strip()
        if not text:
            continue
        if seen and SIGNOFF_LINE.match(text[:_MAX_LINE]):
            end = k + 1
            names = 0
            probe = end
            while probe < len(lines) and names < 2:
                candidate = lines[probe].strip()
                if not candidate:  # "Best regards,\n\nSome One": the name may sit apart
                    probe += 1
                    continue
                if len(candidate.split()) > 4 or _prose(candidate) or _CONTACT_RE.search(
                        candidate) or "|" in candidate:
                    break
                names += 1
                probe += 1
                end = probe
                if probe < len(lines) and not lines[probe].strip():
                    break  # the name; a block after a blank line is the signature
            rest = [ln for ln in lines[end:] if ln.strip()]
            if rest and not _POSTSCRIPT_RE.match(rest[0]):
                steps.append("signature")
                lines = lines[:end]
            break
        seen = True
    return lines


def _disclaimer_follows(lines: list[str], start: int) -> bool:
    for line in lines[start : start + 4]:
        if line.strip():
            return bool(_DISCLAIMER_RE.match(line.strip()[:_MAX_LINE]))
    return False


def _normalise(text: str) -> str:
    text = text[:_MAX_CHARS].replace("\r\n", "\n").replace("\r", "\n")
    text = _INVISIBLE_RE.sub("", text).replace("\u00a0", " ")
    return "\n".join(line.rstrip() for line in text.split("\n")[:_MAX_LINES])


def _strip(text: str, sent_texts: Sequence[str], steps: list[str]) -> str:
    lines = _normalise(text).split("\n")
    sent = _sent_text_lines(lines, sent_texts)
    lines = _strip_lines(lines, sent, steps)
    return "\n".join(lines).strip("\n").rstrip()


def _method(steps: list[str], prefix: str = "") -> str:
    seen: list[str] = []
    for step in steps:
        if step not in seen:
            seen.append(step)
    body = "+".join(seen) if seen else "as-is"
    return f"{prefix}{body}"


def strip_reply_text(text: str, *, sent_texts: Sequence[str] = ()) -> str:
    """Return the new text of a reply body you already have as text; never raises.

    Removes quoted history (top-, bottom- and inline-posted; English, Spanish, German, French,
    Dutch, Portuguese and other attributions; Outlook separators and header blocks), "-- "
    signatures, mobile signatures, legal disclaimers and any block reproducing one of
    `sent_texts` (texts we sent in the thread). On an internal error returns "" rather than
    text that may still contain quotes.
    """
    try:
        if not isinstance(text, str):
            return ""
        return _strip(text, tuple(sent_texts or ()), [])
    except Exception:
        return ""


# --- HTML ------------------------------------------------------------------------------------

# Containers in which clients put the quoted message (ids and classes; Outlook sometimes
# prefixes them with "x_" when the HTML has been through Exchange twice).
_QUOTE_CLASSES = {
    "gmail_quote": "gmail",
    "gmail_quote_container": "gmail",
    "yahoo_quoted": "yahoo",
    "moz-cite-prefix": "thunderbird",
    "zmail_extra": "zoho",
    "protonmail_quote": "protonmail",
    "ms-outlook-mobile-reference-message": "outlook-mobile",
}
_QUOTE_IDS = {
    "divrplyfwdmsg": "outlook",
    "appendonsend": "outlook",
    "olk_src_body_section": "outlook",
    "mail-editor-reference-message-container": "outlook",
    "ecxsignaturequote": "hotmail",
    "isforwardcontent": "outlook",
}
# Outlook desktop's header block sits in a div with this exact top border.
_OUTLOOK_BORDER_RE = re.compile(
    r"border:\s*none;\s*border-top:\s*solid\s+#(?:B5C4DF|E1E1E1)\s+1\.0pt", _I
)


class _QuoteFinder(HTMLParser):
    """Find the source offset of the first element a mail client uses to hold quoted mail."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: tuple[int, int, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.found is not None:
            return
        values = {k.lower(): (v or "") for k, v in attrs}
        ident = values.get("id", "").lower()
        if ident.startswith("x_"):
            ident = ident[2:]
        classes = [c[2:] if c.startswith("x_") else c for c in values.get("class", "").split()]
        name = None
        for cls in classes:
            if cls.lower() in _QUOTE_CLASSES and not (
                cls.lower() == "gmail_quote" and tag == "blockquote"
            ):
                name = _QUOTE_CLASSES[cls.lower()]
                break
        if name is None and ident in _QUOTE_IDS:
            name = _QUOTE_IDS[ident]
        if name is None and tag == "div" and _OUTLOOK_BORDER_RE.search(values.get("style", "")):
            name = "outlook"
        if name is not None:
            line, col = self.getpos()
            self.found = (line, col, name)


def _cut_html_quote(html: str) -> tuple[str, str | None]:
    """Cut `html` at the first quote container; return the head and the container's name."""
    finder = _QuoteFinder()
    try:
        finder.feed(html)
        finder.close()
    except Exception:
        return html, None
    if finder.found is None:
        return html, None
    line, col, name = finder.found
    lines = html.split("\n")
    # getpos() counts lines from 1 and columns from 0, in the text as fed.
    offset = sum(len(x) + 1 for x in lines[: line - 1]) + col
    return html[:offset], name


def extract_reply(msg: EmailMessage, *, sent_texts: Sequence[str] = ()) -> ReplyText:
    """Return the new text of a reply message, what decided it, and the whole body text.

    Uses the text/plain body when there is one. For HTML-only replies the HTML is first cut
    at the container a client marks as the quoted message (Gmail, Outlook, Yahoo,
    Thunderbird, ...), then converted to text with blockquotes as "> " lines, and the text
    rules run as for plain text. `sent_texts` are texts we sent in this thread (the text part
    of our feedback request): blocks reproducing them are removed wherever they are. Never
    raises; on an internal error the text is empty and the method is "error".
    """
    full_text = ""
    try:
        full_text, source = text_body(msg)
        sents = tuple(sent_texts or ())
        steps: list[str] = []
        if source == "html":
            html = html_body(msg)
            head, container = _cut_html_quote(html)
            if container is not None:
                steps.append(f"html-{container}")
                text = html_to_text(head)
                if not text.strip():
                    # Some clients put the whole message inside their wrapper; fall back.
                    text, steps = full_text, []
            else:
                text = full_text
            # gateway links unwrapped first: a safelinks URL makes a signature line look
            # like a paragraph of prose
            result = _strip(unwrap_links(text), sents, steps)
            return ReplyText(unwrap_links(result), _method(steps, "html:"), full_text)
        if source == "none":
            return ReplyText("", "empty", full_text)
        result = _strip(unwrap_links(full_text), sents, steps)
        return ReplyText(unwrap_links(result), _method(steps, "plain:"), full_text)
    except Exception as exc:  # never let one strange message stop the pipeline
        return ReplyText("", f"error:{type(exc).__name__}", full_text)
