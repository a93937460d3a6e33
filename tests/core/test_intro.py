"""Intro capture on our own .eml fixtures: who is the referrer, who are the parties."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.core.body import parse_message
from service.core.intro import Member, Senders, is_service_address, parse_intro
from service.core.model import Kind

DATA = Path(__file__).resolve().parent.parent / "data" / "intros"
SERVICE = ("referrals@network.example",)
SENDERS = Senders.build(
    [Member("alice@example.com", "Alice Martin", aliases=("alice.private@gmail.example",))]
)


def verdict(name: str, senders: Senders = SENDERS):
    msg = parse_message((DATA / name).read_bytes())
    return parse_intro(msg, service_addresses=SERVICE, senders=senders)


@pytest.mark.parametrize(
    ("name", "kind", "referrer", "parties"),
    [
        # mixed-case From is stored lowercased; a bare address has no name
        ("plain_two_parties.eml", Kind.INTRO, "alice@example.com",
         ["bob@acme.example", "carol@studio.example"]),
        # the service in Cc (with a plus tag) and the member's own alias are not parties
        ("cc_service_and_alias.eml", Kind.INTRO, "alice@example.com",
         ["bob@acme.example", "carol@studio.example"]),
        # three people: one referral, every party asked; RFC 2047 names decoded
        ("group_intro.eml", Kind.INTRO, "alice@example.com",
         ["bob@acme.example", "carol@studio.example", "taro@yamada.example"]),
        # a forwarded intro counts the original's people
        ("forwarded_rfc822.eml", Kind.INTRO, "alice@example.com",
         ["bob@acme.example", "carol@studio.example"]),
        ("one_party_only.eml", Kind.IGNORED, "alice@example.com", ["bob@acme.example"]),
        ("stranger.eml", Kind.REJECTED, "mallory@evil.example", []),
    ],
)
def test_intro_fixtures(name: str, kind: Kind, referrer: str, parties: list[str]) -> None:
    v = verdict(name)
    assert v.kind is kind, v.reason
    assert v.referrer is not None and v.referrer.email == referrer
    assert [p.email for p in v.parties] == parties
    assert v.reason


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
