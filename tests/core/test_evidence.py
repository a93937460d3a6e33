"""The reader's evidence table (service/core/reader.py): proof outranks guesses.

A reply token or a reference to our own mail proves a person is answering us; only proof of
automatic mail beats it. Headers that merely look like bulk mail (Fastmail's and Proton's
Feedback-ID on every personal message, List-Unsubscribe, Precedence) never drop a reply or a
member's intro.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.core.intro import Member, Senders
from service.core.model import Classification, Evidence, Kind, Outcome
from service.core.outgoing import stable_message_id
from service.core.reader import ReadContext, read_bytes
from service.core.tokens import make_token, plus_address

SERVICE = "referrals@network.example"
SECRET = b"s" * 32
ALICE = Member("alice@fastmail.com", "Alice Martin")


def _positive(text: str) -> Classification:
    return Classification(Outcome.POSITIVE if "well" in text else Outcome.UNCLEAR, 0.9, "test")


CTX = ReadContext(SERVICE, Senders.build([ALICE]), _positive, secret=SECRET)
OUR_ID = stable_message_id(SECRET, "request:7:1", "feedback_request", "network.example")

# Headers real providers put on personal mail (none proves anything about who wrote it).
WEAK = {
    "Feedback-ID": "123:fastmail:mail",  # Fastmail, Proton: every message
    "List-Unsubscribe": "<mailto:u@esp.example>",  # some providers, CRM plug-ins
    "Precedence": "bulk",  # gateways, old list software
    "X-Mailer": "Mailchimp Mandrill",  # an ESP-looking mailer
    "X-Auto-Response-Suppress": "All",  # Outlook on ordinary mail
    "X-Campaign-Id": "c-77",
    "X-MC-User": "abc",
}


def _reply(extra: dict[str, str], *, token: bool = True, refs: bool = True,
           text: str = "It went really well, we signed last week.") -> bytes:
    to = plus_address(SERVICE, make_token(SECRET, 7)) if token else SERVICE
    head = {"From": "Priya Raman <priya@proton.me>", "To": to,
            "Subject": "Re: How did your introduction to Tom go?",
            "Message-ID": "<r1@proton.me>", "Date": "Thu, 08 Oct 2026 10:00:00 +0000"}
    if refs:
        head["In-Reply-To"] = head["References"] = f"<{OUR_ID}>"
    head.update(extra)
    lines = "".join(f"{k}: {v}\r\n" for k, v in head.items())
    return f"{lines}Content-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n".encode()


def _intro(extra: dict[str, str]) -> bytes:
    head = {"From": "Alice Martin <alice@fastmail.com>",
            "To": "Priya Raman <priya@proton.me>, Tom Berger <tom@gmx.de>",
            "Subject": "Intro: Priya <> Tom", "Message-ID": "<i1@fastmail.com>",
            "Date": "Mon, 05 Oct 2026 09:00:00 +0000", **extra}
    lines = "".join(f"{k}: {v}\r\n" for k, v in head.items())
    body = "Priya, meet Tom. You two should talk."
    return f"{lines}Content-Type: text/plain\r\n\r\n{body}\r\n".encode()


def test_feedback_id_on_a_token_reply_is_outranked() -> None:
    r = read_bytes(_reply({"Feedback-ID": WEAK["Feedback-ID"]}), CTX)
    assert r.kind is Kind.REPLY and r.tokens and r.outcome is Outcome.POSITIVE
    assert "outranks bulk-hint" in r.reason
    assert r.notes and r.notes[0].startswith("outranked: bulk-hint")


def test_references_alone_outrank_every_weak_header() -> None:
    r = read_bytes(_reply(WEAK, token=False), CTX)
    assert r.kind is Kind.REPLY and r.our_references == (OUR_ID,)


def test_a_list_id_does_not_outrank_a_token_either() -> None:
    # a reply that went through a list on its way is still a person answering us
    r = read_bytes(_reply({"List-Id": "<team.lists.example>"}), CTX)
    assert r.kind is Kind.REPLY


def test_automatic_mail_outranks_the_token() -> None:
    # responders answer to Reply-To and quote our References: they must never be read
    for extra, kind in (({"Auto-Submitted": "auto-replied"}, Kind.AUTOREPLY),
                        ({"Subject": "Automatic reply: How did your introduction go?"},
                         Kind.AUTOREPLY),
                        ({"Return-Path": "<>"}, Kind.AUTOREPLY),
                        ({"From": "noreply@proton.me"}, Kind.IGNORED)):
        r = read_bytes(_reply({**WEAK, **extra}), CTX)
        assert r.kind is kind, (extra, r.reason)
        assert r.screening is not None and r.screening.evidence is Evidence.AUTOMATIC


def test_a_members_intro_with_bulk_hints_is_an_intro() -> None:
    r = read_bytes(_intro(WEAK), CTX)
    assert r.kind is Kind.INTRO, r.reason
    assert {p.email for p in r.parties} == {"priya@proton.me", "tom@gmx.de"}
    assert r.notes and r.notes[0].startswith("outranked: ")


def test_a_list_post_from_a_member_is_not_an_intro() -> None:
    r = read_bytes(_intro({"List-Id": "<founders.lists.example>",
                           "List-Post": "<mailto:founders@lists.example>"}), CTX)
    assert r.kind is Kind.IGNORED and r.reason.startswith("list:")


def test_a_hint_still_sets_aside_mail_nothing_else_explains() -> None:
    raw = _reply({"Feedback-ID": "x"}, token=False, refs=False, text="Our autumn offers")
    r = read_bytes(raw.replace(b"priya@proton.me", b"news@shop.example"), CTX)
    assert r.kind is Kind.IGNORED and r.reason.startswith("bulk-hint:")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    extra=st.dictionaries(st.sampled_from([*sorted(WEAK), "List-Id", "List-Post"]),
                          st.sampled_from(["bulk", "list", "junk", "1", "<x@y>", "All", ""]),
                          max_size=6),
    token=st.booleans(),
)
def test_no_weak_header_drops_a_reply_to_us(extra: dict[str, str], token: bool) -> None:
    """Property: whatever weak or list headers a reply carries, proof of a conversation
    (a token, or References to our mail) keeps it a reply."""
    r = read_bytes(_reply(extra, token=token, refs=True), CTX)
    assert r.kind is Kind.REPLY, (extra, r.reason)
