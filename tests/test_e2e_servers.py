"""End to end against real servers on 127.0.0.1: Postfix (SMTP) delivering into Dovecot (IMAP).

The operator's view: a `.env`-style environment and `introloop run --once`, nothing else.
Intros and replies are sent over SMTP like any mail client would; we read every mailbox
over IMAP to see exactly what each person received (the `e2e` fixture, tests/support.py).
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from service.cli import main

pytestmark = pytest.mark.servers
SERVICE = "referrals@example.test"


def text_of(msg) -> str:
    return msg.get_body(("plain",)).get_content()


def test_whole_loop_on_real_servers(e2e) -> None:
    stack = e2e.stack
    e2e.cli("members", "add", "alice@example.test", "--name", "Alice Martin")
    e2e.intro("Alice Martin <alice@example.test>",
              ["Bob <bob@example.test>", "Carol <carol@example.test>"], "Intro: Bob <> Carol")
    stack.wait_for(SERVICE, 1)

    first = e2e.run_once()  # records the intro and, with a zero delay, sends both requests
    assert [p[1] for p in first["processed"]] == ["intro"]
    assert sorted(s[0] for s in first["sent"]) == ["feedback_request", "feedback_request"]
    bob_req = e2e.wait_from_service("bob@example.test", 1)[0]
    carol_req = e2e.wait_from_service("carol@example.test", 1)[0]
    for req in (bob_req, carol_req):
        assert req.get_content_type() == "multipart/alternative"
        assert str(req["Reply-To"]).startswith("referrals+")
        assert req["Auto-Submitted"] == "auto-generated"
        assert req["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "Carol" in str(bob_req["Subject"])
    # the service keeps what it sent in its Sent folder
    assert len(stack.messages(SERVICE, "Sent")) == 2

    e2e.answer("bob@example.test", bob_req, "It went great, thanks! Already working on a pilot.")
    e2e.answer("carol@example.test", carol_req, "Nice chat, but honestly not a fit for us.")
    stack.wait_for(SERVICE, 3)
    second = e2e.run_once()
    assert sorted(p[1] for p in second["processed"]) == ["reply", "reply"]
    assert sorted((s[0], s[1]) for s in second["sent"]) == sorted([
        ("thanks_positive", "bob@example.test"), ("appreciation", "alice@example.test"),
        ("thanks_negative", "carol@example.test"), ("lessons", "alice@example.test"),
    ])
    bob_all = e2e.wait_from_service("bob@example.test", 2)
    assert str(bob_all[1]["Subject"]).startswith("Thank you")
    assert bob_all[1]["In-Reply-To"] == bob_req["Message-ID"]  # threaded under the request
    alice = e2e.wait_from_service("alice@example.test", 2)
    subjects = sorted(str(m["Subject"]) for m in alice)
    assert any("worked" in s for s in subjects) and any("learned" in s for s in subjects)
    lessons = next(m for m in alice if "learned" in str(m["Subject"]))
    assert "not a fit" in text_of(lessons) and "signals" in text_of(lessons).lower()

    counts = {u: len(stack.messages(u)) for u in
              ("alice@example.test", "bob@example.test", "carol@example.test")}
    third = e2e.run_once()
    assert third["sent"] == [] and third["processed"] == []
    assert {u: len(stack.messages(u)) for u in counts} == counts  # nothing twice

    referrals = json.loads(e2e.cli("referrals", "--json"))
    assert referrals[0]["outcome"] == "mixed"
    assert {p["outcome"] for p in referrals[0]["parties"]} == {"positive", "negative"}


def test_out_of_office_changes_nothing_and_gets_no_answer(e2e) -> None:
    e2e.cli("members", "add", "alice@example.test")
    e2e.intro("alice@example.test", ["dave@example.test", "erin@example.test"], "Meet Erin")
    e2e.stack.wait_for(SERVICE, 1)
    e2e.run_once()
    dave_req = e2e.wait_from_service("dave@example.test", 1)[0]
    e2e.answer("dave@example.test", dave_req,
               "I am out of the office until 30 November with limited access to email.",
               Auto_Submitted="auto-replied", X_Autoreply="yes")
    e2e.stack.wait_for(SERVICE, 2)
    result = e2e.run_once()
    assert [p[1] for p in result["processed"]] == ["autoreply"]
    assert result["sent"] == [] and result["queued"] == []
    parties = json.loads(e2e.cli("referrals", "--json"))[0]["parties"]
    assert {p["email"]: p["status"] for p in parties}["dave@example.test"] == "requested"
    assert len(e2e.from_service("dave@example.test")) == 1


def test_check_reports_each_server(e2e) -> None:
    out = json.loads(e2e.cli("check", "--json"))
    assert out["ok"] is True
    assert {c["name"] for c in out["checks"]} >= {"settings", "database", "imap", "smtp"}
    bad = {**e2e.env, "INTROLOOP_IMAP_PASSWORD": "wrong"}
    result = CliRunner().invoke(main, ["--env-file", "/nonexistent", "check"], env=bad)
    assert result.exit_code == 1
    line = next(x for x in result.output.splitlines() if x.startswith("ERR imap"))
    assert "refused the login" in line and "Traceback" not in result.output
