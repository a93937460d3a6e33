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
    build_message,
    is_minted,
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
