"""Intro capture on our own .eml fixtures (tests/data/intros/): who is the referrer, who are
the parties, and why anything else is not an intro.

The main test is one table: every client format and intro shape from issue #3, read by the
whole pure reader (`read_bytes`, screening first) exactly as `introloop inspect` reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from service.core.body import parse_message
from service.core.intro import (
    MAX_PARTIES,
    Member,
    Senders,
    asks_to_cancel,
    body_digest,
    forwarded_inline,
    intro_key,
    is_service_address,
    parse_intro,
    people_in,
)
from service.core.model import Classification, Kind, Outcome
from service.core.reader import ReadContext, read_bytes

DATA = Path(__file__).resolve().parent.parent / "data" / "intros"
SERVICE = ("referrals@network.example",)
ALICE = Member(
    "alice@example.com",
    "Alice Martin",
    # her private address, and a colleague the operator registered as hers (not a party)
    aliases=("alice.private@gmail.example", "sam.assistant@example.com"),
)
SENDERS = Senders.build([ALICE])


def _unclear(_text: str) -> Classification:
    return Classification(Outcome.UNCLEAR, 0.0, "test")


CTX = ReadContext(SERVICE[0], SENDERS, _unclear, secret=b"s" * 32)


def verdict(name: str, senders: Senders = SENDERS):
    msg = parse_message((DATA / name).read_bytes())
    return parse_intro(msg, service_addresses=SERVICE, senders=senders)


def read(name: str, ctx: ReadContext = CTX):
    return read_bytes((DATA / name).read_bytes(), ctx)


@dataclass(frozen=True)
class Case:
    file: str
    kind: Kind
    referrer: str | None
    parties: tuple[tuple[str, str], ...]  # (email, display name as written)
    reason: str  # a fragment the one-line reason must contain
    why: str  # what the fixture stands for


BOB = ("bob@acme.example", "Bob Chen")
CAROL = ("carol@studio.example", "Carol Diaz")
A = "alice@example.com"

CASES = [
    # --- every client's format ---------------------------------------------------------------
    Case("gmail_web.eml", Kind.INTRO, A, (BOB, CAROL), "intro by alice@example.com",
         "Gmail web: multipart/alternative, quoted-printable, Bcc invisible"),
    Case("outlook_html_only_tnef.eml", Kind.INTRO, A,
         (("jose@muller.example", "Müller, José"), ("bob.chen@acme.example", "Bob Chen")), "",
         "Exchange: HTML only in base64 windows-1252 + winmail.dat; ISO-8859-1 RFC 2047 "
         "name with a comma; mixed-case Cc"),
    Case("outlook_winmail_only.eml", Kind.INTRO, A, (BOB, CAROL), "",
         "Exchange sent the whole body as TNEF: nothing readable, the headers suffice"),
    Case("apple_mail.eml", Kind.INTRO, A,
         (("taro@yamada.example", "山田太郎"), BOB), "",
         "Apple Mail: QP text + HTML; UTF-8 base64 name; `Meet Bob`"),
    Case("iphone_no_subject.eml", Kind.INTRO, A, (BOB, CAROL), "",
         "iPhone: base64 body, no Subject header at all"),
    Case("android_gmail_alias.eml", Kind.INTRO, A, (("carol@studio.example", ""), BOB), "",
         "Gmail for Android from the member's private address (an alias): the referrer "
         "is the member's main address"),
    Case("plain_mutt.eml", Kind.INTRO, A, (("ann@lee.example", "Ann Lee"),
                                           ("bob@acme.example", "")), "",
         "mutt: us-ascii plain text, `Intro: Ann <> Bob`, visible Bcc of the service"),
    Case("thunderbird_latin1.eml", Kind.INTRO, A,
         (("jose@muller.example", "José Müller"), ("francoise@roux.example", "Françoise Roux")),
         "", "Thunderbird: 8-bit ISO-8859-1 body, format=flowed, folded To, UTF-8 and "
         "latin-1 encoded words"),
    Case("unknown_charset.eml", Kind.INTRO, A,
         (("jose@muller.example", "José Müller"), BOB), "",
         "charset Python does not know, in a name and the body: a clean fallback"),
    Case("mixed_case.eml", Kind.INTRO, A,
         (("bob.chen@acme.example", "Bob Chen"), ("carol@studio.example", "")), "",
         "mixed-case addresses: stored lowercased, names kept; the service in Cc"),
    # --- every intro shape ---------------------------------------------------------------------
    Case("plain_two_parties.eml", Kind.INTRO, A, (BOB, ("carol@studio.example", "")), "",
         "the simplest intro"),
    Case("group_intro.eml", Kind.INTRO, A,
         (("bob@acme.example", ""), ("carol@studio.example", ""),
          ("taro@yamada.example", "山田太郎")), "group intro", "three people"),
    Case("group_four.eml", Kind.INTRO, A,
         (BOB, CAROL, ("dave@dave.example", ""), ("erin@oneil.example", "Erin O'Neil")),
         "group intro", "four people across To and Cc"),
    Case("cc_service_and_alias.eml", Kind.INTRO, A,
         (("bob@acme.example", ""), ("carol@studio.example", "Carol")), "",
         "the service (plus-tagged) and the member's second address in Cc"),
    Case("cc_colleague_alias.eml", Kind.INTRO, A, (BOB, CAROL), "",
         "the member Cc's a colleague registered as their alias: not a party"),
    Case("bcc_visible_sent_copy.eml", Kind.INTRO, A, (BOB, CAROL), "",
         "a sent copy showing `Bcc: referrals@…, Dave`: Bcc is never a party"),
    Case("service_absent.eml", Kind.INTRO, A, (BOB, CAROL), "",
         "the service in no header (only Delivered-To)"),
    Case("service_in_to.eml", Kind.INTRO, A, (BOB, CAROL), "", "the service visible in To"),
    Case("reply_to_differs.eml", Kind.INTRO, A, (BOB, CAROL), "",
         "Reply-To and Sender are the member's office: the referrer is From"),
    # --- forwarded intros ----------------------------------------------------------------------
    Case("forwarded_rfc822.eml", Kind.INTRO, A, (BOB, ("carol@studio.example", "Carol")),
         "forwarded as an attachment", "`Fwd:` with the intro as message/rfc822"),
    Case("fwd_outlook_attached.eml", Kind.INTRO, A, (BOB, CAROL),
         "forwarded as an attachment", "Outlook `FW:` with an HTML note and a .eml attached"),
    Case("fwd_gmail_inline.eml", Kind.INTRO, A, (BOB, CAROL), "forwarded inline",
         "Gmail `---------- Forwarded message ---------` block"),
    Case("fwd_gmail_html_only.eml", Kind.INTRO, A, (BOB, CAROL), "forwarded inline",
         "the same block in an HTML-only message"),
    Case("fwd_outlook_inline.eml", Kind.INTRO, A, (BOB, ("carol@studio.example", "Diaz, Carol")),
         "forwarded inline",
         "Outlook plain text: `From: … Sent: … To: …;`, <mailto:> leftovers, soft line "
         "breaks, the member's colleague in the original's Cc"),
    Case("fwd_outlook_html_only.eml", Kind.INTRO, A,
         (("bob@acme.example", "Chen, Bob"), ("carol@studio.example", "Diaz, Carol")),
         "forwarded inline", "Outlook HTML-only forward, `Last, First` names"),
    Case("fwd_outlook_german.eml", Kind.INTRO, A,
         (("juergen@weiss.example", "Jürgen Weiß"), ("bob@acme.example", "Bob Chen")),
         "forwarded inline", "German Outlook: Von / Gesendet / An / Betreff, `WG:`"),
    Case("fwd_apple_inline.eml", Kind.INTRO, A, (BOB, CAROL), "forwarded inline",
         "Apple Mail `Begin forwarded message:`, quoted with `>`"),
    Case("fwd_thunderbird.eml", Kind.INTRO, A, (BOB, CAROL), "forwarded inline",
         "Thunderbird: Subject first, tabs after the colons"),
    Case("fwd_written_by_party.eml", Kind.INTRO, A, (BOB, CAROL), "forwarded inline",
         "a forwarded 'Alice suggested I get in touch': its sender is a party"),
    Case("fwd_not_involved.eml", Kind.IGNORED, A, (BOB, CAROL, ("dave@dave.example", "Dave Doe")),
         "not one alice@example.com sent or was copied on",
         "a forward of someone else's thread: the member introduced nobody"),
    Case("fwd_outlook_names_only.eml", Kind.IGNORED, A, (), "without addresses",
         "Exchange-internal forward naming people without addresses: say so, guess nothing"),
    # --- not intros ----------------------------------------------------------------------------
    Case("one_party_only.eml", Kind.IGNORED, A, (("bob@acme.example", ""),), "only one other",
         "a member writing to one person"),
    Case("only_service.eml", Kind.IGNORED, A, (), "no one besides",
         "a member writing to the service alone"),
    Case("mass_mailing.eml", Kind.IGNORED, A, (), f"more than {MAX_PARTIES}",
         "an invitation to twelve people is a mailing"),
    Case("list_from_member.eml", Kind.IGNORED, None, (), "list",
         "list mail (List-Id), even from a member to two people"),
    # Precedence: bulk is only a hint (gateways and providers stamp it on personal mail): a
    # member writing to two people is an intro; the confirmation lets them cancel a mistake
    Case("newsletter_bulk.eml", Kind.INTRO, A, (BOB, CAROL), "intro by",
         "Precedence: bulk does not outrank a member's message to two people"),
    Case("autoreply_member.eml", Kind.AUTOREPLY, None, (), "auto",
         "the member's out-of-office to an intro thread"),
    Case("bounce_mailer_daemon.eml", Kind.BOUNCE, None, (), "5.1.1",
         "a DSN from MAILER-DAEMON quoting the intro"),
    Case("own_loop.eml", Kind.IGNORED, None, (), "our own",
         "our own feedback request coming back"),
    Case("noreply_sender.eml", Kind.IGNORED, None, (), "noreply", "a noreply sender"),
    Case("no_from.eml", Kind.IGNORED, None, (), "no readable From", "no From header"),
    Case("stranger.eml", Kind.REJECTED, "mallory@evil.example",
         (("bob@acme.example", ""), ("carol@studio.example", "")), "was not recorded",
         "an unknown sender introducing two people: rejected, and `inspect` says whom"),
]


def test_every_fixture_is_in_the_table() -> None:
    listed = {c.file for c in CASES}
    on_disk = {p.name for p in DATA.glob("*.eml")} - {"followup_in_thread.eml"}
    assert on_disk == listed


@pytest.mark.parametrize("case", CASES, ids=[c.file.removesuffix(".eml") for c in CASES])
def test_capture_table(case: Case) -> None:
    r = read(case.file)
    assert r.kind is case.kind, r.reason
    if case.referrer is not None:
        assert r.referrer is not None and r.referrer.email == case.referrer
    got = tuple((p.email, p.name) for p in r.parties) if case.kind is Kind.INTRO else (
        tuple((p.email, p.name) for p in r.intro.parties) if r.intro else ())
    assert got == case.parties, r.reason
    assert case.reason.lower() in r.reason.lower()
    assert r.reason and "\n" not in r.reason and "Traceback" not in r.reason
    assert all(p.email == p.email.lower() for p in r.parties)


def test_forwards_keep_the_originals_message_id() -> None:
    # requests thread under the message the parties actually have
    assert verdict("forwarded_rfc822.eml").intro_message_id == "orig-1@example.com"
    assert verdict("gmail_web.eml").intro_message_id == "CAF4kq=Yx7Q0w3mZ1eJt5p+Hk@mail.gmail.com"


def test_unknown_charset_subject_is_decoded_cleanly() -> None:
    v = verdict("unknown_charset.eml")
    assert v.subject == "José / Bob"
    assert "\ufffd" not in v.subject


def test_allow_list_with_star_still_screens_automatic_mail() -> None:
    everyone = ReadContext(SERVICE[0], Senders.build([ALICE], ["*"]), _unclear)
    for name in ("noreply_sender.eml", "bounce_mailer_daemon.eml", "autoreply_member.eml",
                 "own_loop.eml", "list_from_member.eml"):
        assert read(name, everyone).kind is not Kind.INTRO, name
    assert read("stranger.eml", everyone).kind is Kind.INTRO


def test_names_are_kept_and_decoded() -> None:
    v = verdict("group_intro.eml")
    assert v.parties[2].name == "山田太郎"
    v = verdict("plain_two_parties.eml")
    assert v.parties[0].name == "Bob Chen" and v.parties[1].name == ""


def test_nobody_creates_referrals_without_members_or_allow_list() -> None:
    assert verdict("plain_two_parties.eml", Senders()).kind is Kind.REJECTED


def test_allow_list_domains_and_star() -> None:
    assert verdict("stranger.eml", Senders.build([], ["@evil.example"])).kind is Kind.INTRO
    assert verdict("stranger.eml", Senders.build([], ["*"])).kind is Kind.INTRO
    assert verdict("stranger.eml", Senders.build([], ["@vil.example"])).kind is Kind.REJECTED


def test_alias_sender_counts_as_the_member() -> None:
    raw = (DATA / "plain_two_parties.eml").read_bytes().replace(
        b"Alice@Example.com", b"alice.private@gmail.example")
    v = parse_intro(parse_message(raw), service_addresses=SERVICE, senders=SENDERS)
    assert v.kind is Kind.INTRO and v.referrer is not None
    assert v.referrer.email == "alice@example.com"


def test_service_address_matching() -> None:
    assert is_service_address("Referrals+abc@Network.Example", SERVICE)
    assert not is_service_address("referrals@other.example", SERVICE)
    assert not is_service_address("referralsx@network.example", SERVICE)


def test_a_forward_to_people_is_not_read_as_the_original() -> None:
    # the member forwards something to two people: those two are the intro, not the original's
    raw = (DATA / "fwd_gmail_inline.eml").read_bytes().replace(
        b"To: referrals@network.example", b"To: dave@dave.example, erin@oneil.example")
    v = parse_intro(parse_message(raw), service_addresses=SERVICE, senders=SENDERS)
    assert [p.email for p in v.parties] == ["dave@dave.example", "erin@oneil.example"]
    assert not v.forwarded


# --- the inline-forward reader on its own -----------------------------------------------------


@pytest.mark.parametrize(
    ("value", "people", "nameless"),
    [
        ("Bob Chen <bob@acme.example>, carol@studio.example",
         [("bob@acme.example", "Bob Chen"), ("carol@studio.example", "")], []),
        ("Chen, Bob <bob@acme.example>; Diaz, Carol <carol@studio.example>",
         [("bob@acme.example", "Chen, Bob"), ("carol@studio.example", "Diaz, Carol")], []),
        ("Bob <bob@acme.example<mailto:bob@acme.example>>; 'Carol' <carol@studio.example>",
         [("bob@acme.example", "Bob"), ("carol@studio.example", "Carol")], []),
        ("Alice Martin [mailto:Alice@Example.com]", [("alice@example.com", "Alice Martin")], []),
        ("Bob Chen; Carol Diaz", [], ["Bob Chen", "Carol Diaz"]),
        ("", [], []),
    ],
)
def test_people_in_forward_blocks(value: str, people: list, nameless: list) -> None:
    got, missing = people_in(value)
    assert [(p.email, p.name) for p in got] == people
    assert missing == nameless


@pytest.mark.parametrize(
    "text",
    [
        "hi\n\n---------- Forwarded message ---------\nFrom: A <a@x.example>\nDate: today\n"
        "Subject: s\nTo: B <b@y.example>, c@z.example\n\nbody",
        "-----Original Message-----\nFrom: A [mailto:a@x.example]\nSent: Monday\n"
        "To: B <b@y.example>; C <c@z.example>\nSubject: s\n",
        "> De : A <a@x.example>\n> Envoyé : lundi\n> À : B <b@y.example>; c@z.example\n"
        "> Objet : s\n",
        "*From:* A <a@x.example>\n*Date:* Mon\n*Subject:* s\n*To:* B <b@y.example>, "
        "c@z.example\n",
        "差出人: A <a@x.example>\n送信日時: 2026年10月5日\n宛先: B <b@y.example>, c@z.example\n"
        "件名: 紹介\n",
    ],
    ids=["gmail", "outlook-old", "french-quoted", "gmail-bold", "japanese"],
)
def test_forward_blocks_in_several_shapes(text: str) -> None:
    fwd = forwarded_inline(text)
    assert fwd is not None
    assert [p.email for p in fwd.to + fwd.cc] == ["b@y.example", "c@z.example"]


@pytest.mark.parametrize(
    "text",
    [
        "From: me\nHello there",  # a From line alone is not a block
        "To whom it may concern: hello\nSubject: none",  # prose with colons
        "On Mon, Alice wrote:\n> To: bob@acme.example\n",  # no From, no marker
        "",
    ],
)
def test_not_forward_blocks(text: str) -> None:
    assert forwarded_inline(text) is None


# --- dedupe keys and cancel words ---------------------------------------------------------------


def test_body_digest_ignores_whitespace_and_case() -> None:
    assert body_digest("Bob, meet Carol.\r\n\r\nAlice") == body_digest("bob,  meet carol. alice")
    assert body_digest("Bob, meet Carol.") != body_digest("Bob, meet Dave.")


def test_intro_key_is_order_and_case_independent() -> None:
    assert intro_key("A@x.example", ["b@y", "C@z"], "d") == intro_key("a@x.example",
                                                                       ["c@z", "b@y"], "d")
    assert intro_key("a@x.example", ["b@y"], "d") != intro_key("a@x.example", ["b@y"], "e")


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("cancel", True),
        ("Cancel please", True),
        ("Please cancel this one, wrong people.", True),
        ("Oops - cancelled that intro, sorry", True),
        ("annuler", True),
        ("Bitte stornieren", True),
        ("Thanks!", False),
        ("Don't cancel, this is right", False),
        ("no need to cancel", False),
        ("", False),
        ("Thanks, all good.\nAlice\n\nPS the Carol I meant is another one, cancel", False),
    ],
)
def test_asks_to_cancel(text: str, want: bool) -> None:
    # only the first lines count: a long message mentioning the word later is not a command
    assert asks_to_cancel(text) is want
