"""The answer alone: what a careful person quotes of a reply to the member who made the intro.

`Reply.text` keeps the whole new text a person wrote (the operator may read it); members read
only the answer: no greeting ("Hola Lucía,"), no sign-off ("Beste Grüße"), no name, title,
company or phone lines, no legal footer (Impressum: "Geschäftsführer: …, Amtsgericht …"),
confidentiality notice, gateway banner or mobile footer, in all five languages. The classifier
reads the same cut text, so a company called "Great Lakes Partners" in a signature never
sways an outcome.

How, in order (each step only ever removes lines from the edges of the answer):

1. drop a gateway banner on top and mobile footers anywhere ("Sent from my iPhone");
2. drop a greeting line ("Hi Test Network,"), or a greeting that opens the answer's first
   line ("Hi Alice, it went great!" keeps "it went great!");
3. cut at a sign-off line ("Best,", "Thanks, Jürgen", "Met vriendelijke groet") and
   everything below it, or at a legal or confidentiality paragraph;
4. drop trailing lines that read as a signature: contact details, "Name | Title | Company",
   a name or title alone (short, capitalised, no sentence punctuation), legal keywords.

Never returns an empty string for a non-empty text: if the cut would leave nothing (a reply
that is only "Thanks!"), the text is returned as it was. Pure; never raises.
"""

from __future__ import annotations

import re

from service.core.gateway import BANNER_RE
from service.core.replytext import (
    CONTACT_RE,
    DISCLAIMER_RE,
    NAME_WORD,
    SIGNOFF,
    SIGNOFF_LINE,
    is_mobile_signature,
)

__all__ = ["answer_of"]

_NAME_WORD = NAME_WORD
_GREETING = (r"(?:hi|hello|hey|dear|good (?:morning|afternoon|evening)|morning|"
             r"hallo|hi zusammen|hallo zusammen|liebe[rs]?|sehr geehrte[rs]?|guten (?:tag|morgen|"
             r"abend)|moin|servus|gruezi|grüezi|grüß (?:dich|gott)|"
             r"bonjour|bonsoir|salut|coucou|cher|chère|chers|madame|monsieur|"
             r"hola|buenos días|buenos dias|buenas tardes|buenas|estimad[oa]s?|querid[oa]s?|"
             r"hoi|hallo allemaal|beste|goedemorgen|goedemiddag|geachte|dag)")
_PUNCT_OR_EMOJI = r"(?:[,:!.—–-]|[\U0001F300-\U0001FAFF\u2600-\u27BF])"
# A line that is only a greeting: "Hi Test Network,", "¡Hola!", "Hi Test Network 👋"
_GREETING_LINE = re.compile(
    rf"^\s*[¡]?{_GREETING}\b(?:[ \t]+(?:[\w.'-]+)){{0,4}}[ \t]*{_PUNCT_OR_EMOJI}*\s*$", re.I)
# A greeting opening the answer's first line: "Hi Alice, it went great!", "Hey Lucy — we…"
_GREETING_LEAD = re.compile(
    rf"^\s*[¡]?{_GREETING}\b(?:[ \t]+{_NAME_WORD}){{0,3}}[ \t]*{_PUNCT_OR_EMOJI}+\s+(?=\S)",
    re.I)
# Courtesy around the answer, not the answer: "Thanks for checking in.", "Hope you're well!",
# "danke der Nachfrage!", "Have a great weekend!"
_COURTESY = re.compile(
    r"(?:thanks|thank you|many thanks|cheers)(?: (?:so much|a lot))? for (?:checking in|the "
    r"(?:nudge|follow[- ]?up|reminder|check[- ]?in|message|note)|following up|asking|reaching "
    r"out|your (?:message|note|e-?mail))|(?:i )?hope (?:you(?:'re| are)|all is|this finds you)"
    r"[^.!?]{0,30}|have a (?:great|good|nice|lovely) (?:day|week|weekend|evening)|"
    r"(?:vielen )?dank(?:e)? (?:der|für die|fuer die) nachfrage|(?:ich )?hoffe,? (?:es geht|"
    r"ihnen|dir)[^.!?]{0,30}|(?:ein )?schönes wochenende|"
    r"merci (?:pour|de) (?:le suivi|votre (?:message|relance|suivi))|j'espère que (?:vous|tu)"
    r"[^.!?]{0,30}|(?:encore merci et )?à bientôt|bonne (?:journée|semaine|soirée|fin de semaine)|"
    r"je vous prie d'agréer[^.!?]{0,80}|"
    r"gracias por (?:preguntar|el seguimiento|escribir|tu mensaje|su mensaje)|espero que "
    r"(?:estés|esté|estéis)[^.!?]{0,30}|(?:que tengas? )?(?:un )?buen fin de semana|"
    r"dank (?:je |u )?(?:wel )?voor (?:het navragen|de vraag|je bericht|uw bericht)|"
    r"ik hoop dat[^.!?]{0,30}|fijn weekend",
    re.I)
# "Alex, Worked out great.": a name alone opening the answer, then a new sentence. Not a
# word that opens answers ("Great, Thanks", "Yes, We signed").
_CAP, _LOW = "A-ZÀ-ÖØ-Þ", "a-zà-öø-ÿ'-"
_NAME_LEAD = re.compile(rf"^\s*([{_CAP}][{_LOW}]{{1,14}})(?:\s+[{_CAP}][{_LOW}]{{1,14}})?"
                        rf",\s+(?=[{_CAP}])")
# "Barbara," alone on the first line: a greeting by name only
_NAME_LINE = re.compile(
    rf"^\s*([{_CAP}][{_LOW}]{{1,14}})(?:\s+[{_CAP}][{_LOW}]{{1,14}}){{0,2}}\s*[,:]\s*$")
_NOT_NAMES = frozenset([
    "great", "yes", "no", "nope", "yep", "yeah", "sure", "thanks", "thank", "well", "so", "ok",
    "okay", "sadly", "unfortunately", "honestly", "fantastic", "perfect", "good", "bad", "hmm",
    "oh", "ah", "wow", "all", "not", "still", "also", "again", "done", "alas", "ja", "nein",
    "danke", "gut", "super", "leider", "klar", "genau", "prima", "toll", "schade", "naja", "oui",
    "non", "merci", "bien", "malheureusement", "parfait", "hélas", "bon", "bref", "si", "sí",
    "gracias", "genial", "claro", "perfecto", "vale", "bueno", "lamentablemente", "nee",
    "bedankt", "goed", "helaas", "jammer", "top", "mooi", "oké",
])
_COURTESY_LEAD = re.compile(rf"^\s*(?:{_COURTESY.pattern})\s*[.!,]*\s*", re.I)
_COURTESY_LINE = re.compile(rf"^\s*(?:{_COURTESY.pattern})\s*[.!,]*\s*$", re.I)

# "…aangenomen 🎉 Groetjes, Daan": a sign-off and a name closing the answer's own line
_SIGNOFF_TAIL = re.compile(
    rf"(?<=[.!?…)\U0001F300-\U0001FAFF\u2600-\u27BF])\s+(?i:{SIGNOFF})[ \t]*[,.!]*"
    rf"(?:[ \t]+{_NAME_WORD}){{1,3}}[ \t]*[.!]?\s*$")
_LEGAL = re.compile(
    r"\b(?:geschäftsführ\w*|geschaeftsfuehr\w*|amtsgericht|registergericht|handelsregister|"
    r"hrb|hra|ust-?id\w*|steuer-?nr|sitz der gesellschaft|impressum|vorstand|"
    r"aufsichtsrat|siret|siren|rcs|sas au capital|sarl au capital|tva intracom\w*|"
    r"cif|nif|registro mercantil|kvk|btw(?:-?nr|-?nummer)?|kamer van koophandel|iban|bic|"
    r"vat(?: no| number| reg)?|company (?:no|number|registration)|registered (?:office|in))\b",
    re.I)
_SENTENCE_END = re.compile(r"[.!?…)]['\"”’]?\s*$")
_PIPE_OR_BULLET = re.compile(r"\s[|•·]\s|^\s*[|•·]|\s[|•·]\s*$")


def _prose(line: str) -> bool:
    """A sentence a person wrote (an answer), not a name, title or company line."""
    s = line.strip()
    words = s.split()
    if not words:
        return False
    if _SENTENCE_END.search(s) and (len(words) >= 3 or s.endswith(("!", "?"))):
        return True
    return len(words) >= 8 and not _PIPE_OR_BULLET.search(s)


def _signature_like(line: str) -> bool:
    """A trailing line that belongs to a signature block."""
    s = line.strip()
    if not s:
        return True
    if CONTACT_RE.search(s) or _LEGAL.search(s) or _PIPE_OR_BULLET.search(s):
        return not _prose(s) or _LEGAL.search(s) is not None
    if _prose(s):
        return False
    words = s.split()
    # a name, a title, a company: short and mostly capitalised words
    caps = sum(1 for w in words if w[:1].isupper() or not w[:1].isalpha())
    return len(words) <= 7 and caps >= max(1, (len(words) + 1) // 2)


def _cut(lines: list[str]) -> list[str]:
    # 1. banners on top, mobile footers anywhere
    while lines and not lines[0].strip():
        lines.pop(0)
    for _ in range(3):
        if lines and BANNER_RE.match(lines[0][:1000]):
            while lines and lines[0].strip():
                lines.pop(0)
            while lines and not lines[0].strip():
                lines.pop(0)
    lines = [ln for ln in lines if not is_mobile_signature(ln)]

    # 2. a greeting line, or a greeting opening the first line; then courtesy ("Thanks for
    # checking in.") before the answer
    for _ in range(4):
        first = next((i for i, ln in enumerate(lines) if ln.strip()), None)
        if first is None:
            break
        line = lines[first]
        name = _NAME_LINE.match(line)
        if _GREETING_LINE.match(line) or _COURTESY_LINE.match(line) or (
                name and name.group(1).lower() not in _NOT_NAMES):
            lines = lines[first + 1:]
            continue
        m = _GREETING_LEAD.match(line) or _COURTESY_LEAD.match(line)
        if m is None:
            name = _NAME_LEAD.match(line)
            m = name if name and name.group(1).lower() not in _NOT_NAMES else None
        if m and line[m.end():].strip():
            lines = [*lines[:first], line[m.end():], *lines[first + 1:]]
            continue
        break

    # 3. a sign-off line (not the first line with text) or a legal/confidentiality paragraph
    seen_text = False
    for i, ln in enumerate(lines):
        s = ln.strip()
        if not s:
            continue
        if seen_text and SIGNOFF_LINE.match(s):
            lines = lines[:i]
            break
        starts_paragraph = i == 0 or not lines[i - 1].strip()
        if seen_text and starts_paragraph and (DISCLAIMER_RE.match(s[:1000]) or (
                _LEGAL.search(s) and not _prose(s))):
            lines = lines[:i]
            break
        seen_text = True

    # 4. trailing signature and courtesy lines (never the only line of the answer), and a
    # sign-off closing the answer's own last line
    while len([ln for ln in lines if ln.strip()]) > 1 and (
            _signature_like(lines[-1]) or _COURTESY_LINE.match(lines[-1])):
        lines.pop()
    if lines:
        tail = _SIGNOFF_TAIL.search(lines[-1])
        if tail and lines[-1][:tail.start()].strip():
            lines[-1] = lines[-1][:tail.start()]
    return lines


def answer_of(text: str) -> str:
    """The answer alone, as a careful person would quote it (see the module docstring)."""
    if not text or not text.strip():
        return text or ""
    try:
        lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        cut = "\n".join(_cut(lines)).strip()
        return cut or text.strip()
    except Exception:  # a quote is a courtesy; never let it stop the mail that carries it
        return text.strip()
