"""Gateways leave no trace: subject tags, banners, rewritten links and name markers."""

from __future__ import annotations

from email import message_from_string, policy

import pytest

from service.core import headers as h
from service.core.gateway import clean_name, strip_subject_tags, unwrap_links
from service.core.replytext import strip_reply_text


@pytest.mark.parametrize(("subject", "want"), [
    ("[EXTERNAL] Intro: Bob <> Carol", "Intro: Bob <> Carol"),
    ("RE: [EXTERNAL] How did your introduction to Carol go?",
     "RE: How did your introduction to Carol go?"),
    ("[EXT] [External] AW: Intro", "AW: Intro"),
    ("EXTERNAL: Intro Bob / Carol", "Intro Bob / Carol"),
    ("*** EXTERNAL *** Re: Hello", "Re: Hello"),
    ("[Extern] WG: Vorstellung", "WG: Vorstellung"),
    ("Intro: the [EXTERNAL] team", "Intro: the [EXTERNAL] team"),  # only at the start
    ("Re: external partners", "Re: external partners"),
])
def test_subject_tags(subject: str, want: str) -> None:
    assert strip_subject_tags(subject) == want


@pytest.mark.parametrize(("url", "want"), [
    ("https://urldefense.com/v3/__https://acme.example/pricing__;!!AbCdEf!x1y2z3$",
     "https://acme.example/pricing"),
    ("https://urldefense.proofpoint.com/v2/url?u=https-3A__acme.example_pricing-3Fa-3D1&d=DwMF"
     "aQ&c=x&r=y&m=z&s=w&e=", "https://acme.example/pricing?a=1"),
    ("https://eur01.safelinks.protection.outlook.com/?url=https%3A%2F%2Facme.example%2Fpricing"
     "&data=05%7C01%7C&sdata=abc&reserved=0", "https://acme.example/pricing"),
    ("https://protect-eu.mimecast.com/s/AbCdEfGh?domain=acme.example", "acme.example"),
    ("https://acme.example/x", "https://acme.example/x"),
])
def test_rewritten_links_are_unwrapped(url: str, want: str) -> None:
    assert unwrap_links(f"See {url} for it.") == f"See {want} for it."


@pytest.mark.parametrize("banner", [
    "CAUTION: This email originated from outside of the organization. Do not click links or "
    "open attachments unless you recognize the sender and know the content is safe.",
    "You don't often get email from priya@kestrel.example. Learn why this is important",
    "[EXTERNAL]",
    "EXTERNAL EMAIL: This message came from outside your organization.",
    "This message originated from outside your organisation.",
    "Externe E-Mail: Öffnen Sie keine Links oder Anhänge, wenn Sie den Absender nicht kennen.",
    "ATTENTION : ce courriel provient de l'extérieur de l'organisation. Ne cliquez pas sur les "
    "liens.",
    "PRECAUCIÓN: Este correo se originó fuera de la organización. No haga clic en enlaces.",
    "LET OP: deze e-mail is afkomstig van buiten de organisatie. Klik niet op koppelingen.",
])
def test_banners_on_top_are_dropped(banner: str) -> None:
    text = f"{banner}\n\nHi Alice,\n\nIt went great, we signed on Friday.\n\nPriya"
    got = strip_reply_text(text)
    assert "signed on Friday" in got and banner.split()[0] not in got.split("\n")[0]


def test_two_stacked_banners_and_a_name_marker() -> None:
    text = ("[EXTERNAL]\n\nCAUTION: This email originated from outside of the organization.\n\n"
            "It went well, thanks!")
    assert strip_reply_text(text) == "It went well, thanks!"
    assert clean_name("Priya Raman [EXTERNAL]") == "Priya Raman"
    assert clean_name("Raman, Priya (External)") == "Raman, Priya"
    msg = message_from_string("From: \"Raman, Priya [EXTERNAL]\" <priya@k.example>\n\nx",
                              policy=policy.default)
    who = h.sender(msg)  # type: ignore[arg-type]
    assert who is not None and who.name == "Raman, Priya" and who.given == "Priya"


def test_a_reply_that_starts_with_attention_keeps_its_words() -> None:
    text = "Attention to detail was great, we hired her.\n\nBest, Tom"
    assert "we hired her" in strip_reply_text(text)


def test_outlook_semicolons_between_addresses() -> None:
    # Outlook shows (and some Exchange setups send) "a; b": both are addressed
    msg = message_from_string(
        'To: Rebecca Stone <r@stone.example>; "Adeyemi, Tunde" <t@bright.example>\n'
        "Cc: undisclosed-recipients:;\n\nx", policy=policy.default)
    people = h.addresses(msg, "To", "Cc")  # type: ignore[arg-type]
    assert [(p.email, p.name) for p in people] == [("r@stone.example", "Rebecca Stone"),
                                                    ("t@bright.example", "Adeyemi, Tunde")]
