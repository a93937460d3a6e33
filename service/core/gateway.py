"""What corporate mail gateways add to mail, and how to take it off again. Pure.

Mimecast, Proofpoint, Microsoft Defender for Office 365 and their kin sit in front of many
company mailboxes, the service's own included. On the way in they:

* tag the subject: ``[EXTERNAL] Intro: Bob <> Carol``, ``RE: [EXT] How did…``, ``EXTERNAL:``;
* put a banner at the *top* of the body: "CAUTION: This email originated from outside of the
  organization…", Microsoft's first-contact tip "You don't often get email from x. Learn why
  this is important", or a localised one ("Externe E-Mail…", "ATTENTION : ce courriel
  provient de l'extérieur…");
* rewrite every link: ``https://urldefense.com/v3/__https://acme.example/__;!!AbC!x$``,
  ``https://urldefense.proofpoint.com/v2/url?u=https-3A__acme.example_&d=…``,
  ``https://eur01.safelinks.protection.outlook.com/?url=https%3A%2F%2Facme.example%2F&data=…``,
  ``https://protect-eu.mimecast.com/s/AbCd?domain=acme.example``;
* sometimes mark the sender's name: ``Priya Raman [EXTERNAL]``, ``Priya Raman (External)``.

None of it is the person's words, so none of it may reach a reply text, a quote to a member, a
referral's subject or a party's name. Why hand-written: no maintained library unwraps these
(the PyPI candidates are single-vendor and unmaintained), and each format is a few lines.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["BANNER_RE", "clean_name", "strip_subject_tags", "unwrap_links"]

_TAG = (r"(?:\[\s*(?:external(?:\s+(?:e-?mail|sender|message))?|ext|extern[eo]?|"
        r"externe?\s+e-?mail|caution|warning|suspicious|spam\??|unverified\s+sender)\s*\]"
        r"|\*{1,3}\s*external\s*\*{1,3}|(?:external|ext)\s*:)")
_SUBJECT_TAG_RE = re.compile(rf"^\s*{_TAG}\s*", re.I)
_REPLY_PREFIX_RE = re.compile(
    r"^\s*(?:re|aw|wg|fw|fwd|tr|rv|res|sv|vs|antw|doorst)\s*(?:\[\d+\])?\s*:\s*", re.I)


def strip_subject_tags(subject: str) -> str:
    """The subject without gateway tags, wherever they sit among the reply prefixes:
    "RE: [EXTERNAL] Intro" -> "RE: Intro", "[EXT] [EXTERNAL] Intro" -> "Intro"."""
    out, rest = "", subject or ""
    for _ in range(12):  # bounded: prefixes and tags alternate a few times at most
        tag = _SUBJECT_TAG_RE.match(rest)
        if tag:
            rest = rest[tag.end():]
            continue
        prefix = _REPLY_PREFIX_RE.match(rest)
        if prefix:
            out, rest = out + prefix.group(0), rest[prefix.end():]
            continue
        break
    return (out + rest).strip()


_NAME_TAG_RE = re.compile(
    r"\s*(?:\[\s*(?:external|ext|extern[eo]?)\s*\]|\(\s*(?:external|ext|extern[eo]?)\s*\))\s*",
    re.I)


def clean_name(name: str) -> str:
    """A display name without a gateway's marker: "Priya Raman [EXTERNAL]" -> "Priya Raman"."""
    return " ".join(_NAME_TAG_RE.sub(" ", name or "").split())


# A banner opens the body. It names the outside, a warning, or the first-contact tip.
BANNER_RE = re.compile(
    r"^[*\[\s]*(?:"
    r"(?:caution|warning|external|attention|achtung|vorsicht|extern(?:al|e)?|precauci[oó]n|"
    r"avertissement|"
    r"atenci[oó]n|aviso|let\s+op|waarschuwing|externo|externe)"
    r"(?:\s+(?:e-?mail|sender|message|mail|correo))?\b[\]*:!\s-]{0,6}.{0,200}?"
    r"\b(?:outside|external|extern|externen|externe|extérieur|l['’]extérieur|fuera|externo|"
    r"buiten|außerhalb|ausserhalb|do\s+not\s+click|links?|enlaces|liens|koppelingen)"
    r"|you\s+don['’]t\s+often\s+get\s+e-?mail\s+from\b"
    r"|(?:sie|u)\s+(?:erhalten|ontvangt)\s+nicht\s+oft\s+e-?mail"
    r"|vous\s+ne\s+recevez\s+pas\s+souvent\s+de\s+courriers?"
    r"|no\s+suele\s+recibir\s+correo"
    r"|this\s+(?:e-?mail|message)\s+(?:originated|came|was\s+sent|is)\s+from\s+(?:outside|an?\s+"
    r"external)"
    r"|this\s+is\s+an\s+external\s+e-?mail"
    r"|\[?\s*(?:external|extern|ext|externe?|externo)\s*\]?\s*$"
    r"|\[\s*(?:external|extern|ext|externe?|externo)\s*\]"
    r")",
    re.I,
)

_URL_RE = re.compile(r"https?://[^\s<>\"')\]]{1,2000}", re.I)
_BRACKETED_RE = re.compile(r"(?<=\S)<(https?://[^\s<>]{1,2000})>", re.I)
_V3_RE = re.compile(r"https?://urldefense(?:\.proofpoint)?\.com/v3/__(.+?)__;[^\s<>\"')\]]*",
                    re.I)


def _proofpoint_v2(url: str) -> str | None:
    query = parse_qs(urlsplit(url).query)
    target = (query.get("u") or [""])[0]
    if not target:
        return None
    # v2 encodes "%" as "-" and "/" as "_": https-3A__acme.example_path -> https://acme…/path
    return unquote(target.replace("_", "/").replace("-", "%"))


def _one(url: str) -> str:
    host = urlsplit(url).hostname or ""
    if host.endswith("safelinks.protection.outlook.com"):
        target = (parse_qs(urlsplit(url).query).get("url") or [""])[0]
        return target or url
    if host == "urldefense.proofpoint.com" and "/v2/" in url:
        return _proofpoint_v2(url) or url
    if host == "urldefense.proofpoint.com" and "/v1/" in url:
        target = (parse_qs(urlsplit(url).query).get("u") or [""])[0]
        return unquote(target) or url
    if "mimecast.com" in host and "/s/" in url:
        # the original address is on Mimecast's side; its domain is all the link keeps
        domain = (parse_qs(urlsplit(url).query).get("domain") or [""])[0]
        return domain or url
    return url


def unwrap_links(text: str) -> str:
    """Every gateway-rewritten link in `text` replaced by the address it stands for (or, for
    Mimecast, the domain it names). Other text is unchanged; never raises."""
    if not text or ("urldefense" not in text and "safelinks" not in text
                    and "mimecast" not in text):
        return text
    try:
        # v3 keeps the original between "__" and "__;", with "*" standing for bytes it
        # encoded separately; those are rare in the links people paste, so they stay as is
        text = _V3_RE.sub(lambda m: m.group(1), text)
        # Outlook's plain text writes a link as "www.acme.example<https://gateway/…>": the
        # text already says where it goes, so the rewritten copy in brackets goes
        text = _BRACKETED_RE.sub(lambda m: "" if _one(m.group(1)) != m.group(1) else m.group(0),
                                 text)
        return _URL_RE.sub(lambda m: _one(m.group(0)), text)
    except Exception:
        return text
