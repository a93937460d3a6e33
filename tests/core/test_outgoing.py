"""Outgoing headers: injection-proof names, stable ids, RFC 3834/8058 headers."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes, policy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.core.model import Person
from service.core.outgoing import (
    Envelope,
    HeaderInjection,
    addressee,
    answer_choices,
    build_message,
    header_text,
    is_minted,
    names_of,
    stable_message_id,
)

NOW = datetime(2026, 10, 5, 9, 0, tzinfo=UTC)


def _env(to: Person, **kw) -> Envelope:
    return Envelope(sender=Person("referrals@net.example", "The Network"), to=to,
                    message_id="x.0123456789abcdef01234567@net.example", date=NOW, **kw)


def test_hostile_display_name_changes_only_the_name() -> None:
    msg = build_message(_env(Person("bob@acme.example", "Bob\r\nBcc: x@evil.example")),
                        "Hello", "text", "<p>html</p>")
    raw = msg.as_bytes(policy=policy.SMTP)
    parsed = message_from_bytes(raw, policy=policy.default)
    assert parsed["Bcc"] is None
    assert parsed["To"].addresses[0].addr_spec == "bob@acme.example"
    assert "Bob" in parsed["To"].addresses[0].display_name


def test_line_breaks_in_subject_or_reply_to_are_refused() -> None:
    with pytest.raises(HeaderInjection):
        build_message(_env(Person("bob@acme.example")), "Hi\r\nBcc: x@evil", "t", None)
    with pytest.raises(HeaderInjection):
        build_message(_env(Person("bob@acme.example"), reply_to="a@b\nBcc: c@d"), "Hi", "t",
                      None)


def test_required_headers_and_alternative_order() -> None:
    msg = build_message(
        _env(Person("bob@acme.example", "José Müller"), reply_to="referrals+1xabc@net.example",
             in_reply_to="req.1@net.example", unsubscribe="referrals+1sabc@net.example"),
        "Wie lief es?", "plain", "<p>html</p>",
    )
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["List-Unsubscribe"] == "<mailto:referrals+1sabc@net.example?subject=stop>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["In-Reply-To"] == "<req.1@net.example>"
    assert msg.get_content_type() == "multipart/alternative"
    parts = [p.get_content_type() for p in msg.iter_parts()]
    assert parts == ["text/plain", "text/html"]
    raw = msg.as_bytes(policy=policy.SMTP)
    assert b"=?utf-8?" in raw  # the non-ASCII name is encoded, not raw 8-bit
    assert message_from_bytes(raw, policy=policy.default)["To"].addresses[0].display_name \
        == "José Müller"


def test_stable_message_ids() -> None:
    a = stable_message_id(b"s" * 20, "request:1:1", "feedback_request", "net.example")
    assert a == stable_message_id(b"s" * 20, "request:1:1", "feedback_request", "net.example")
    assert a != stable_message_id(b"s" * 20, "request:1:2", "feedback_request", "net.example")
    assert is_minted(a, "net.example") and is_minted(f"<{a}>", "NET.example")
    assert not is_minted("intro-1@net.example", "net.example")
    assert not is_minted(a, "other.example")


@given(st.text(max_size=60))
def test_any_name_yields_a_single_line_header(name: str) -> None:
    msg = build_message(_env(Person("bob@acme.example", name)), "Hello", "text", None)
    raw = msg.as_bytes(policy=policy.SMTP)
    head = raw.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n"):
        assert line.startswith((b" ", b"\t")) or b":" in line
    parsed = message_from_bytes(raw, policy=policy.default)
    assert parsed["To"].addresses[0].addr_spec == "bob@acme.example"
    assert parsed["Bcc"] is None


# ---------------------------------------------------------------- encoded-words and names


@pytest.mark.parametrize("where", ["name", "subject", "references"])
def test_encoded_words_cannot_smuggle_a_line_break(where: str) -> None:
    # the email package decodes RFC 2047 words in what it is given: "=0D=0A" is CR LF
    evil = "=?utf-8?q?Bob=0D=0ABcc:_x@evil.example?="
    to = Person("bob@acme.example", evil if where == "name" else "Bob")
    subject = f"About {evil}" if where == "subject" else "Hello"
    refs = (f"<{evil}@x.example>",) if where == "references" else ()
    msg = build_message(_env(to, references=refs), subject, "text", "<p>html</p>")
    raw = msg.as_bytes(policy=policy.SMTP)
    parsed = message_from_bytes(raw, policy=policy.default)
    assert parsed["Bcc"] is None
    assert [a.addr_spec for a in parsed["To"].addresses] == ["bob@acme.example"]
    for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        assert line.startswith((b" ", b"\t")) or b":" in line


def test_header_text_keeps_honest_encoded_names() -> None:
    assert header_text("=?utf-8?q?Jos=C3=A9_M=C3=BCller?=") == "José Müller"
    assert header_text("Bob\r\n  Chen\x00") == "Bob Chen"
    assert "=?" not in header_text("=?bogus-charset?q?x?=")


@pytest.mark.parametrize("name, hello, short, display", [
    ("Bob Chen", "Hi Bob", "Bob", "Bob Chen"),
    ("", "Hello", "bob@acme.example", "bob@acme.example"),  # address only
    ("bob@acme.example", "Hello", "bob@acme.example", "bob@acme.example"),
    ("Dr. Jane Smith", "Hi Jane", "Jane", "Dr. Jane Smith"),
    ("Smith, Jane", "Hi Jane", "Jane", "Smith, Jane"),
    ("José Müller-Łukasiewicz", "Hi José", "José", "José Müller-Łukasiewicz"),
    ("山田 太郎", "Hi 山田 太郎", "山田 太郎", "山田 太郎"),
    ("'Carol'", "Hi Carol", "Carol", "Carol"),
    ("Bob\r\nBcc: x@evil", "Hello", "bob@acme.example", "bob@acme.example"),
])
def test_names_fall_back_gracefully(name: str, hello: str, short: str, display: str) -> None:
    a = addressee(Person("bob@acme.example", name))
    assert (a.hello, a.short, a.display) == (hello, short, display)
    assert a.first_name  # the old meaning: never empty


def test_names_of_and_one_click_choices() -> None:
    people = [addressee(Person("c@x.example", "Carol Nguyen")), addressee(Person("d@x.example"))]
    assert names_of(people) == "Carol Nguyen and d@x.example"
    assert names_of(people, short=True) == "Carol and d@x.example"
    choices = answer_choices(b"s" * 20, "referrals@net.example", 7, "Carol")
    assert [c.kind for c in choices] == ["positive", "negative", "pending", "optout"]
    assert all(c.address.startswith("referrals+7") and c.url.startswith(f"mailto:{c.address}?")
               for c in choices)
    assert choices[0].body == "It went well with Carol."
