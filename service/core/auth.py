"""Is an intro really from the member its From header names? Pure: DNS comes in as a function.

Anyone can write `From: alice@example.com`. Two independent sources can vouch for it:

* the **receiving server's** `Authentication-Results` (RFC 8601), but only fields stamped by a
  server the operator trusts (INTROLOOP_TRUSTED_AUTHSERV_ID). Any other A-R field is ignored:
  the sender (or any hop on the way) can write one saying whatever it likes;
* **direct DKIM verification** with dkimpy (INTROLOOP_VERIFY_DKIM), which needs DNS; the caller
  injects the resolver so this module stays free of I/O.

The verdict, for the From domain D:

1. a trusted `dmarc=fail` for D                                  -> fail (always wins)
2. a trusted `dmarc=pass` for D, or a DKIM pass aligned with D
   (trusted A-R or verified here), or an SPF pass aligned with D -> pass
3. direct verification is on and nothing above passed            -> fail (strict mode)
4. the trusted server evaluated DKIM or SPF and neither passed
   aligned with D                                                -> fail
5. nothing to judge by                                           -> none (accepted as before)

"Fail wins" matters: a forged A-R field carrying the trusted id can add a `pass`, but cannot
hide the `fail` the real server stamped. Alignment is DMARC's relaxed alignment approximated
without the Public Suffix List: one domain equals, or is a subdomain of, the other. That errs
towards accepting `a.example.com` for `example.com` (as DMARC does), and nobody can sign for a
bare public suffix such as `co.uk`, so it cannot be used to pass as someone else.

Known limits: Microsoft 365 writes A-R fields without an authserv-id (not RFC 8601); those do
not parse and are ignored, so Exchange Online operators should rely on INTROLOOP_VERIFY_DKIM.
ARC (mail re-sent by lists and forwarders) is not evaluated: intros come straight from members.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from email.message import Message
from typing import Literal

import authres

from service.core import headers as h

# dkimpy's resolver signature: (name as bytes, timeout=...) -> TXT record bytes or None
DnsFunc = Callable[..., bytes | None]
Status = Literal["pass", "fail", "none"]
_FAIL_DMARC = frozenset({"fail"})
_MAX_AR_FIELDS = 50  # a message with more is hostile; the first ones are the newest anyway
_MAX_DKIM_SIGNATURES = 5


@dataclass(frozen=True, slots=True)
class MethodResult:
    """One `method=result` of a trusted Authentication-Results field, with its domain."""

    method: str  # dkim | spf | dmarc | ...
    result: str  # pass | fail | softfail | none | neutral | temperror | permerror | policy
    domain: str  # header.d / header.i / header.from / smtp.mailfrom domain, lowercased ("" if none)
    authserv_id: str

    def __str__(self) -> str:
        return f"{self.method}={self.result}" + (f" ({self.domain})" if self.domain else "")


@dataclass(frozen=True, slots=True)
class DkimCheck:
    """The result of verifying one DKIM-Signature ourselves."""

    domain: str  # the signature's d=, lowercased
    result: str  # pass | fail | temperror (DNS did not answer)


DkimVerifier = Callable[[bytes], tuple[DkimCheck, ...]]


@dataclass(frozen=True, slots=True)
class AuthVerdict:
    """Whether the From domain is vouched for. `reason` is one line for `inspect` and logs."""

    status: Status
    reason: str
    from_domain: str = ""
    results: tuple[MethodResult, ...] = ()
    dkim: tuple[DkimCheck, ...] = ()

    @property
    def rejected(self) -> bool:
        """True when the message must not be accepted as coming from its From address."""
        return self.status == "fail"


def _domain_of(value: str) -> str:
    value = (value or "").strip().strip("<>").lower()
    return value.rpartition("@")[2].strip(".")


def aligned(domain: str, from_domain: str) -> bool:
    """Relaxed alignment without the Public Suffix List (see the module docstring)."""
    d, f = domain.lower().strip("."), from_domain.lower().strip(".")
    if not d or not f or "." not in d or "." not in f:
        return False
    return d == f or f.endswith("." + d) or d.endswith("." + f)


def trusted_ids(value: Collection[str]) -> tuple[str, ...]:
    """Normalise the configured authserv-ids (lowercased, empty entries dropped)."""
    return tuple(v.strip().lower() for v in value if v and v.strip())


def trusted_results(msg: Message, trusted: Collection[str]) -> tuple[MethodResult, ...]:
    """Every method result of the A-R fields whose authserv-id is trusted, in header order.

    Fields that do not parse (including Microsoft 365's id-less ones) are skipped: an A-R
    field we cannot attribute to the trusted server is no evidence either way.
    """
    ids = set(trusted_ids(trusted))
    if not ids:
        return ()
    out: list[MethodResult] = []
    for value in h.headers(msg, "Authentication-Results")[:_MAX_AR_FIELDS]:
        try:
            parsed = authres.AuthenticationResultsHeader.parse_value(value)
        except Exception:  # authres raises its own SyntaxError and friends on junk
            continue
        server = str(parsed.authserv_id or "").strip().lower()
        if server not in ids:
            continue
        for res in parsed.results:
            out.append(MethodResult(str(res.method).lower(), str(res.result).lower(),
                                    _result_domain(res), server))
    return tuple(out)


def _result_domain(res: object) -> str:
    props = {
        f"{p.type}.{p.name}".lower(): str(p.value)
        for p in getattr(res, "properties", []) or []
        if getattr(p, "value", None) is not None
    }
    method = str(getattr(res, "method", "")).lower()
    if method == "dkim":
        return _domain_of(props.get("header.d", "") or props.get("header.i", ""))
    if method == "spf":
        return _domain_of(props.get("smtp.mailfrom", "") or props.get("smtp.helo", ""))
    if method == "dmarc":
        return _domain_of(props.get("header.from", ""))
    return ""


def authenticate(
    msg: Message,
    *,
    from_address: str,
    trusted: Collection[str] = (),
    dkim: Sequence[DkimCheck] | None = None,
) -> AuthVerdict:
    """Judge whether `from_address`'s domain is vouched for (rules in the module docstring).

    `dkim` is None when direct verification is off; otherwise the checks of every signature
    (see `make_dkim_verifier`). Never raises.
    """
    ids = trusted_ids(trusted)
    domain = _domain_of(from_address)
    if not ids and dkim is None:
        return AuthVerdict("none", "sender authentication is not configured", domain)
    results = trusted_results(msg, ids)
    checks = tuple(dkim or ())
    by = "/".join(ids) if ids else "direct check"
    base = {"from_domain": domain, "results": results, "dkim": checks}

    dmarc = [r for r in results if r.method == "dmarc" and r.domain in ("", domain)]
    if any(r.result in _FAIL_DMARC for r in dmarc):
        return AuthVerdict("fail", f"From domain {domain} fails DMARC (per {by})", **base)
    if any(r.result == "pass" for r in dmarc):
        return AuthVerdict("pass", f"DMARC pass for {domain} (per {by})", **base)
    dkim_pass = [r.domain for r in results
                 if r.method == "dkim" and r.result == "pass" and aligned(r.domain, domain)]
    dkim_pass += [c.domain for c in checks if c.result == "pass" and aligned(c.domain, domain)]
    if dkim_pass:
        return AuthVerdict("pass", f"DKIM signature of {dkim_pass[0]} aligned with {domain}",
                           **base)
    spf_pass = [r for r in results
                if r.method == "spf" and r.result == "pass" and aligned(r.domain, domain)]
    if spf_pass:
        return AuthVerdict("pass", f"SPF pass for {spf_pass[0].domain} aligned with {domain} "
                           f"(per {by})", **base)
    seen = ", ".join(str(r) for r in results if r.method in ("dkim", "spf"))
    if dkim is not None:
        if any(c.result == "temperror" for c in checks):
            why = "its DKIM key could not be fetched (DNS did not answer; retry later)"
        elif checks:
            why = "no valid DKIM signature of " + domain + " (" + ", ".join(
                f"{c.domain}: {c.result}" for c in checks) + ")"
        else:
            why = "the message has no DKIM signature"
        extra = f"; {by}: {seen}" if seen else ""
        return AuthVerdict("fail", f"From domain {domain} is not verified: {why} "
                           f"(INTROLOOP_VERIFY_DKIM is on){extra}", **base)
    if seen:
        return AuthVerdict("fail", f"From domain {domain} fails both aligned DKIM and SPF "
                           f"(per {by}: {seen})", **base)
    return AuthVerdict("none", f"no DKIM/SPF/DMARC results from {by}; sender not verified",
                       **base)


def make_dkim_verifier(dnsfunc: DnsFunc, *, timeout: int = 5) -> DkimVerifier:
    """A function raw bytes -> the DkimCheck of each DKIM-Signature, using `dnsfunc` for keys.

    `dnsfunc` is dkimpy's resolver interface (`dkim.dnsplug.get_txt` for real DNS, a dict
    lookup in tests). A resolver that raises counts as `temperror`, not as a bad signature:
    a DNS outage must not read as forgery.
    """

    def verify(raw: bytes) -> tuple[DkimCheck, ...]:
        import dkim  # dkimpy: imported here so reading mail does not need it unless asked

        out: list[DkimCheck] = []
        try:
            count = len(re.findall(rb"(?im)^dkim-signature\s*:", raw.split(b"\r\n\r\n", 1)[0]
                                   .split(b"\n\n", 1)[0]))
        except Exception:
            return ()
        for idx in range(min(count, _MAX_DKIM_SIGNATURES)):
            failed_dns: list[bool] = []

            def lookup(name: bytes, timeout: int = timeout, _f: list[bool] = failed_dns
                       ) -> bytes | None:
                try:
                    return dnsfunc(name, timeout=timeout)
                except Exception:
                    _f.append(True)
                    return None

            domain, ok = "", False
            try:
                d = dkim.DKIM(raw, timeout=timeout)
                ok = bool(d.verify(idx=idx, dnsfunc=lookup))
                domain = (d.domain or b"").decode("ascii", "replace").lower() if d.domain else ""
            except Exception:  # dkimpy raises on malformed signatures; that is a failure
                ok = False
            if not domain:
                domain = _signature_domain(raw, idx)
            result = "pass" if ok else ("temperror" if failed_dns else "fail")
            out.append(DkimCheck(domain, result))
        return tuple(out)

    return verify


def _signature_domain(raw: bytes, idx: int) -> str:
    """The d= of the idx-th DKIM-Signature, best effort (for the reason text only)."""
    with contextlib.suppress(Exception):
        head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0].decode("ascii", "replace")
        sigs = re.findall(r"(?ims)^dkim-signature\s*:(.*?)(?=^\S|\Z)", head)
        m = re.search(r"\bd\s*=\s*([^;\s]+)", sigs[idx])
        if m:
            return m.group(1).lower()
    return ""
