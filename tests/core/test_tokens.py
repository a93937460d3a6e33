"""Signed reply tokens: round trip, forgery, tampering."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from service.core import tokens as tk
from service.core.model import Outcome

SECRET = b"test-secret-0123456789"


def test_round_trip_every_kind() -> None:
    for kind in tk.KINDS:
        token = tk.make_token(SECRET, 1234, kind)
        assert token == token.lower() and all(c.isalnum() for c in token)
        assert tk.read_token(SECRET, token) == tk.Token(1234, kind)


def test_answer_kinds() -> None:
    assert tk.read_token(SECRET, tk.make_token(SECRET, 7, "p")).answer is Outcome.POSITIVE
    assert tk.read_token(SECRET, tk.make_token(SECRET, 7, "s")).answer is Outcome.OPTOUT
    assert tk.read_token(SECRET, tk.make_token(SECRET, 7, "x")).answer is None


def test_forged_and_altered_tokens_match_nothing() -> None:
    token = tk.make_token(SECRET, 42, "p")
    assert tk.read_token(b"another-secret-value", token) is None
    assert tk.read_token(SECRET, "43" + token[2:]) is None  # another party, same signature
    assert tk.read_token(SECRET, token[:2] + "n" + token[3:]) is None  # answer flipped
    assert tk.read_token(SECRET, token[:-1] + ("a" if token[-1] != "a" else "b")) is None


def test_plus_addresses() -> None:
    addr = tk.plus_address("referrals@net.example", "42xabc")
    assert addr == "referrals+42xabc@net.example"
    assert tk.tag_of(addr.upper(), "referrals@net.example") == "42xabc"
    assert tk.tag_of("other+42xabc@net.example", "referrals@net.example") is None
    found = tk.tokens_in(["bob@x.example", tk.plus_address("referrals@net.example",
                          tk.make_token(SECRET, 5))], "referrals@net.example", SECRET)
    assert found == [tk.Token(5, "x")]


def test_bounce_tags() -> None:
    tag = tk.bounce_tag(SECRET, 99)
    assert tk.read_bounce_tag(SECRET, tag) == 99
    assert tk.read_bounce_tag(SECRET, tag.replace("99", "98")) is None


@given(st.text(max_size=40))
def test_read_token_never_raises(text: str) -> None:
    assert tk.read_token(SECRET, text) is None or isinstance(tk.read_token(SECRET, text),
                                                             tk.Token)
