"""Real DNS for the core's sender authentication: the only place dkimpy's resolver is wired."""

from __future__ import annotations

from service.core.auth import DkimVerifier, make_dkim_verifier


def dkim_verifier(enabled: bool) -> DkimVerifier | None:
    """The DKIM verifier the reader uses when INTROLOOP_VERIFY_DKIM is on, else None.

    dkimpy's `get_txt` queries DNS (dnspython) with a 5-second timeout per key; a lookup that
    fails counts as a temporary error, never as a forged signature (see core.auth).
    """
    if not enabled:
        return None
    from dkim.dnsplug import get_txt

    return make_dkim_verifier(get_txt)
