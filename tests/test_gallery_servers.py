"""Gallery clients through real Postfix and Dovecot: the mail real providers write, over SMTP.

The embedded-loop gallery test (test_gallery.py) covers every client; here three of the ones
that lost people before go over the wire, with the operator's CLI: a Fastmail member's intro
and a party's Feedback-ID reply, a Proton reply, and a reply through a Mimecast gateway. The
gallery's addresses are mapped onto the test mail stack's users; headers and bodies are the
gallery's bytes.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.servers

CLIENTS = Path(__file__).parent / "data" / "clients"
SERVICE = "referrals@example.test"
USERS = ("bob@example.test", "carol@example.test", "dave@example.test", "erin@example.test")


def _mapped(raw: bytes, mapping: dict[str, str]) -> bytes:
    text = raw.decode("utf-8", "surrogateescape")
    for old, new in mapping.items():
        text = text.replace(old, new)
    return text.encode("utf-8", "surrogateescape")


@pytest.mark.parametrize("client", ["fastmail", "proton", "mimecast"])
def test_a_gallery_client_over_smtp_and_imap(e2e, client: str) -> None:
    fill = _gallery_fill()
    path = CLIENTS / client
    with (path / "case.toml").open("rb") as fh:
        case = tomllib.load(fh)
    mapping = {case["member"]["email"]: "alice@example.test",
               "referrals@network.example": SERVICE}
    for party, user in zip(case["intro"]["parties"], USERS, strict=False):
        mapping[party["email"]] = user
    replier = mapping[case["reply"]["from"]]

    e2e.cli("members", "add", "alice@example.test", "--name", case["member"].get("name", ""))
    e2e.stack.send(_mapped((path / "intro.eml").read_bytes(), mapping), "alice@example.test",
                   [SERVICE])
    e2e.stack.wait_for(SERVICE, 1)
    first = e2e.run_once()  # records the intro; with a zero delay the requests go out
    assert [p[1] for p in first["processed"]] == ["intro"], first["processed"]
    request = e2e.wait_from_service(replier, 1)[0]
    row = SimpleNamespace(raw=request.as_bytes(), subject=str(request["Subject"]),
                          message_id=str(request["Message-ID"]).strip("<>"))
    reply = fill(_mapped((path / "reply.eml").read_bytes(), mapping), row)
    e2e.stack.send(reply, replier, [str(request["Reply-To"])])
    e2e.stack.wait_for(SERVICE, 2)
    second = e2e.run_once()
    kinds = [p[1] for p in second["processed"]]
    assert kinds == ["reply"], second["processed"]
    assert f"; {case['reply']['outcome']} (" in second["processed"][0][2]


def _gallery_fill():  # type: ignore[no-untyped-def]
    """test_gallery.fill, loaded by path (tests are not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_gallery", Path(__file__).parent /
                                                  "test_gallery.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.fill
