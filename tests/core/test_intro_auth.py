"""Sender authentication of intros (service/core/auth.py) through the whole reader.

A table of Authentication-Results shapes on top of one real intro, then direct DKIM
verification with a key generated for the test and a fake resolver (no network).
"""

from __future__ import annotations

import base64
from dataclasses import replace
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from service.core.auth import aligned, authenticate, make_dkim_verifier, trusted_results
from service.core.body import parse_message
from service.core.intro import Member, Senders
from service.core.model import Classification, Kind, Outcome
from service.core.reader import ReadContext, read_bytes

DATA = Path(__file__).resolve().parent.parent / "data" / "intros"
INTRO = (DATA / "plain_two_parties.eml").read_bytes()
TRUSTED = "mx.network.example"


def _unclear(_text: str) -> Classification:
    return Classification(Outcome.UNCLEAR, 0.0, "test")


CTX = ReadContext("referrals@network.example",
                  Senders.build([Member("alice@example.com", "Alice Martin")]), _unclear,
                  trusted_authserv_ids=(TRUSTED,))


def with_ar(*fields: str, raw: bytes = INTRO) -> bytes:
    """The intro as the receiving server would store it: A-R fields on top, newest first."""
    head = b"".join(f"Authentication-Results: {f}\r\n".encode() for f in fields)
    return head + raw


# (A-R fields, expected kind, a fragment of the reason)
AR_CASES = [
    ((), Kind.INTRO, "intro by"),
    ((f"{TRUSTED}; dmarc=pass (p=none) header.from=example.com",), Kind.INTRO,
     "sender verified: DMARC pass"),
    ((f"{TRUSTED}; dkim=fail header.d=example.com; spf=fail smtp.mailfrom=x@evil.example; "
      "dmarc=fail (p=reject) header.from=example.com",), Kind.REJECTED, "fails DMARC"),
    # a forged pass from another server changes nothing; the trusted fail decides
    (("mx.evil.example; dmarc=pass header.from=example.com",
      f"{TRUSTED}; dmarc=fail header.from=example.com"), Kind.REJECTED, "fails DMARC"),
    # a forged pass carrying the trusted id cannot hide the real fail: fail wins
    ((f"{TRUSTED}; dmarc=fail header.from=example.com",
      f"{TRUSTED}; dmarc=pass header.from=example.com"), Kind.REJECTED, "fails DMARC"),
    # an A-R from any other server is no evidence at all
    (("mx.evil.example; dkim=pass header.d=example.com; dmarc=pass header.from=example.com",),
     Kind.INTRO, "intro by"),
    ((f"{TRUSTED}; dkim=pass header.d=example.com; spf=fail smtp.mailfrom=alice@example.com",),
     Kind.INTRO, "DKIM signature of example.com"),
    ((f"{TRUSTED}; dkim=pass header.i=@mail.example.com; spf=none",), Kind.INTRO,
     "aligned with example.com"),
    ((f"{TRUSTED}; spf=pass smtp.mailfrom=alice@example.com; dkim=none",), Kind.INTRO,
     "SPF pass"),
    # both pass, but for someone else's domain (an ESP sending as alice@example.com)
    ((f"{TRUSTED}; dkim=pass header.d=esp.example; spf=pass smtp.mailfrom=b@esp.example",),
     Kind.REJECTED, "fails both aligned DKIM and SPF"),
    ((f"{TRUSTED}; spf=softfail smtp.mailfrom=alice@example.com; dkim=none; "
      "dmarc=none header.from=example.com",), Kind.REJECTED, "fails both aligned"),
    # Microsoft 365 writes no authserv-id: unparseable, ignored
    (("spf=pass (sender IP is 1.2.3.4) smtp.mailfrom=example.com; dkim=none; dmarc=fail "
      "action=none header.from=example.com;compauth=fail reason=001",), Kind.INTRO, "intro by"),
    (("MX.Network.Example; dmarc=fail header.from=example.com",), Kind.REJECTED, "DMARC"),
    # a DMARC result about another From domain says nothing about this one
    ((f"{TRUSTED}; dmarc=fail header.from=other.example; dkim=pass header.d=example.com",),
     Kind.INTRO, "DKIM signature"),
    ((f"{TRUSTED}; dmarc=temperror header.from=example.com",), Kind.INTRO, "intro by"),
    ((f"{TRUSTED}; none",), Kind.INTRO, "intro by"),
    (("garbage ;;; ==",), Kind.INTRO, "intro by"),
]


@pytest.mark.parametrize(("fields", "kind", "fragment"), AR_CASES)
def test_authentication_results(fields: tuple[str, ...], kind: Kind, fragment: str) -> None:
    r = read_bytes(with_ar(*fields), CTX)
    assert r.kind is kind, r.reason
    assert fragment in r.reason
    assert "\n" not in r.reason
    if kind is Kind.REJECTED:
        assert r.parties == () and r.auth is not None and r.auth.rejected
        assert "not accepted as an intro from alice@example.com" in r.reason


def test_without_a_trusted_id_results_are_not_consulted() -> None:
    ctx = replace(CTX, trusted_authserv_ids=())
    raw = with_ar(f"{TRUSTED}; dmarc=fail header.from=example.com")
    assert read_bytes(raw, ctx).kind is Kind.INTRO


def test_results_of_the_trusted_server_only() -> None:
    msg = parse_message(with_ar("a.example; dkim=pass header.d=x.example",
                                f"{TRUSTED}; spf=pass smtp.mailfrom=y@y.example"))
    got = trusted_results(msg, [TRUSTED])
    assert [(r.method, r.result, r.domain) for r in got] == [("spf", "pass", "y.example")]


@pytest.mark.parametrize(
    ("d", "f", "want"),
    [("example.com", "example.com", True), ("mail.example.com", "example.com", True),
     ("example.com", "eu.example.com", True), ("ample.com", "example.com", False),
     ("com", "example.com", False), ("", "example.com", False)],
)
def test_relaxed_alignment(d: str, f: str, want: bool) -> None:
    assert aligned(d, f) is want


def test_authenticate_never_raises_on_junk() -> None:
    msg = parse_message(b"Authentication-Results: \xff\xfe;;;\r\n\r\n")
    v = authenticate(msg, from_address="", trusted=[TRUSTED])
    assert v.status in ("none", "fail", "pass") and v.reason


# --- direct DKIM verification (INTROLOOP_VERIFY_DKIM) ---------------------------------------


@pytest.fixture(scope="module")
def key() -> tuple[bytes, bytes]:
    """(private key PEM, the TXT record publishing its public half)."""
    k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption())
    der = k.public_key().public_bytes(serialization.Encoding.DER,
                                      serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)


def signed(pem: bytes, domain: bytes = b"example.com", raw: bytes = INTRO) -> bytes:
    sig = dkim.sign(raw, b"sel", domain, pem,
                    include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    return sig + raw


def ctx_with_dns(record: bytes, fail: bool = False) -> ReadContext:
    def dns(name: bytes, timeout: int = 5) -> bytes | None:
        if fail:
            raise TimeoutError("resolver timed out")
        return record if name.endswith(b"._domainkey.example.com.") or name.endswith(
            b"._domainkey.other.example.") else None

    return replace(CTX, trusted_authserv_ids=(), verify_dkim=make_dkim_verifier(dns))


def test_valid_aligned_signature_is_verified(key) -> None:
    pem, record = key
    r = read_bytes(signed(pem), ctx_with_dns(record))
    assert r.kind is Kind.INTRO and "DKIM signature of example.com" in r.reason


def test_tampered_body_is_rejected(key) -> None:
    pem, record = key
    raw = signed(pem).replace(b"meet Carol", b"meet Mallory")
    r = read_bytes(raw, ctx_with_dns(record))
    assert r.kind is Kind.REJECTED and "no valid DKIM signature" in r.reason


def test_unsigned_is_rejected_in_strict_mode(key) -> None:
    r = read_bytes(INTRO, ctx_with_dns(key[1]))
    assert r.kind is Kind.REJECTED and "no DKIM signature" in r.reason


def test_signature_of_another_domain_does_not_count(key) -> None:
    pem, record = key
    r = read_bytes(signed(pem, b"other.example"), ctx_with_dns(record))
    assert r.kind is Kind.REJECTED and "other.example: pass" in r.reason


def test_dns_failure_is_a_temporary_error_not_forgery(key) -> None:
    pem, record = key
    r = read_bytes(signed(pem), ctx_with_dns(record, fail=True))
    assert r.kind is Kind.REJECTED and "DNS did not answer" in r.reason


def test_trusted_spf_pass_rescues_a_broken_signature(key) -> None:
    pem, record = key
    raw = with_ar(f"{TRUSTED}; spf=pass smtp.mailfrom=alice@example.com",
                  raw=signed(pem).replace(b"meet Carol", b"meet Carol!"))
    ctx = replace(ctx_with_dns(record), trusted_authserv_ids=(TRUSTED,))
    assert read_bytes(raw, ctx).kind is Kind.INTRO


def test_a_verifier_that_raises_is_a_clean_rejection() -> None:
    def broken(_raw: bytes):
        raise RuntimeError("boom")

    r = read_bytes(INTRO, replace(CTX, verify_dkim=broken))
    assert r.kind is Kind.REJECTED and "\n" not in r.reason
