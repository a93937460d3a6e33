"""End to end against real servers on 127.0.0.1: Postfix (SMTP) delivering into Dovecot (IMAP).

The operator's view: a `.env`-style environment and `introloop run --once`, nothing else.
Intros and replies are sent over SMTP like any mail client would; we read every mailbox
over IMAP to see exactly what each person received.
"""

from __future__ import annotations

import json
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import pytest
from click.testing import CliRunner

from service.cli import main

pytestmark = pytest.mark.servers
SERVICE = "referrals@example.test"


@pytest.fixture
def env(mailstack, tmp_path: Path) -> dict[str, str]:
    mailstack.reset()
    return {
        "INTROLOOP_ADDRESS": SERVICE,
        "INTROLOOP_NETWORK_NAME": "Test Network",
        "INTROLOOP_OPERATOR": "operator@example.test",
        "INTROLOOP_SECRET": "e2e-secret-0123456789abcdef",
        "INTROLOOP_IMAP_HOST": mailstack.host,
        "INTROLOOP_IMAP_PORT": str(mailstack.imap_port),
        "INTROLOOP_IMAP_TLS": "none",
        "INTROLOOP_IMAP_USER": SERVICE,
        "INTROLOOP_IMAP_PASSWORD": mailstack.password(SERVICE),
        "INTROLOOP_SMTP_HOST": mailstack.host,
        "INTROLOOP_SMTP_PORT": str(mailstack.smtp_port),
        "INTROLOOP_SMTP_TLS": "none",
        "INTROLOOP_DATA_DIR": str(tmp_path / "data"),
        "INTROLOOP_FEEDBACK_DELAY": "0s",
        "INTROLOOP_TIMEZONE": "UTC",
        "INTROLOOP_QUIET_HOURS": "",
    }


def cli(env: dict[str, str], *args: str) -> str:
    result = CliRunner().invoke(main, ["--env-file", "/nonexistent/.env", *args], env=env,
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def run_once(env: dict[str, str]) -> dict:
    return json.loads(cli(env, "run", "--once", "--json").strip().splitlines()[-1])


def parsed(raws: list[bytes]) -> list[EmailMessage]:
    return [message_from_bytes(r, policy=policy.default) for r in raws]


def from_service(mailstack, user: str) -> list[EmailMessage]:
    return [m for m in parsed(mailstack.messages(user)) if SERVICE in str(m["From"])]


def text_of(msg: EmailMessage) -> str:
    return msg.get_body(("plain",)).get_content()


def intro(sender: str, parties: list[str], subject: str) -> bytes:
    m = EmailMessage()
    m["From"] = sender
    m["To"] = ", ".join(parties)
    m["Subject"] = subject
    m["Message-ID"] = make_msgid(domain="example.test")
    m.set_content("You two should talk. I'll let you take it from here.")
    return m.as_bytes()


def answer(mailstack, user: str, request: EmailMessage, text: str, **headers: str) -> None:
    m = EmailMessage()
    m["From"] = user
    m["To"] = str(request["Reply-To"])
    m["Subject"] = "Re: " + str(request["Subject"])
    m["Message-ID"] = make_msgid(domain="example.test")
    m["In-Reply-To"] = request["Message-ID"]
    m["References"] = request["Message-ID"]
    for k, v in headers.items():
        m[k.replace("_", "-")] = v
    quoted = "\n".join("> " + line for line in text_of(request).splitlines())
    m.set_content(f"{text}\n\nOn Monday, Test Network <{SERVICE}> wrote:\n{quoted}\n")
    mailstack.send(m.as_bytes(), user, [str(request["Reply-To"])])


def test_whole_loop_on_real_servers(mailstack, env) -> None:
    cli(env, "members", "add", "alice@example.test", "--name", "Alice Martin")
    mailstack.send(intro("Alice Martin <alice@example.test>",
                         ["Bob <bob@example.test>", "Carol <carol@example.test>"],
                         "Intro: Bob <> Carol"),
                   "alice@example.test", ["bob@example.test", "carol@example.test", SERVICE])
    mailstack.wait_for(SERVICE, 1)

    first = run_once(env)  # records the intro and, with a zero delay, sends both requests
    assert [p[1] for p in first["processed"]] == ["intro"]
    assert sorted(s[0] for s in first["sent"]) == ["feedback_request", "feedback_request"]
    mailstack.wait_for("bob@example.test", 2)
    mailstack.wait_for("carol@example.test", 2)
    bob_req = from_service(mailstack, "bob@example.test")[0]
    carol_req = from_service(mailstack, "carol@example.test")[0]
    for req in (bob_req, carol_req):
        assert req.get_content_type() == "multipart/alternative"
        assert str(req["Reply-To"]).startswith("referrals+")
        assert req["Auto-Submitted"] == "auto-generated"
        assert req["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "Carol" in str(bob_req["Subject"])

    # the service keeps what it sent in its Sent folder, and flags what it read
    assert len(mailstack.messages(SERVICE, "Sent")) == 2

    answer(mailstack, "bob@example.test", bob_req, "It went great, thanks! Already working on a pilot.")
    answer(mailstack, "carol@example.test", carol_req, "Nice chat, but honestly not a fit for us.")
    mailstack.wait_for(SERVICE, 3)
    second = run_once(env)
    assert sorted(p[1] for p in second["processed"]) == ["reply", "reply"]
    assert sorted((s[0], s[1]) for s in second["sent"]) == sorted([
        ("thanks_positive", "bob@example.test"), ("appreciation", "alice@example.test"),
        ("thanks_negative", "carol@example.test"), ("lessons", "alice@example.test"),
    ])
    mailstack.wait_for("alice@example.test", 2)
    bob_all = from_service(mailstack, "bob@example.test")
    assert len(mailstack.wait_for("bob@example.test", 3)) == 3
    bob_all = from_service(mailstack, "bob@example.test")
    assert [str(m["Subject"]) for m in bob_all][1].startswith("Thank you")
    thanks = bob_all[1]
    assert thanks["In-Reply-To"] == bob_req["Message-ID"]  # threaded under the request
    alice = from_service(mailstack, "alice@example.test")
    subjects = sorted(str(m["Subject"]) for m in alice)
    assert any("worked" in s for s in subjects) and any("learned" in s for s in subjects)
    lessons = next(m for m in alice if "learned" in str(m["Subject"]))
    assert "not a fit" in text_of(lessons) and "signals" in text_of(lessons).lower()

    counts = {u: len(mailstack.messages(u)) for u in
              ("alice@example.test", "bob@example.test", "carol@example.test")}
    third = run_once(env)
    assert third["sent"] == [] and third["processed"] == []
    assert {u: len(mailstack.messages(u)) for u in counts} == counts  # nothing twice

    referrals = json.loads(cli(env, "referrals", "--json"))
    assert referrals[0]["outcome"] == "mixed"
    assert {p["outcome"] for p in referrals[0]["parties"]} == {"positive", "negative"}


def test_out_of_office_changes_nothing_and_gets_no_answer(mailstack, env) -> None:
    cli(env, "members", "add", "alice@example.test")
    mailstack.send(intro("alice@example.test", ["dave@example.test", "erin@example.test"],
                         "Meet Erin"), "alice@example.test",
                   ["dave@example.test", "erin@example.test", SERVICE])
    mailstack.wait_for(SERVICE, 1)
    run_once(env)
    dave_req = from_service(mailstack, "dave@example.test")[0] if mailstack.wait_for(
        "dave@example.test", 2) else None
    assert dave_req is not None
    answer(mailstack, "dave@example.test", dave_req,
           "I am out of the office until 30 November with limited access to email.",
           Auto_Submitted="auto-replied", X_Autoreply="yes")
    mailstack.wait_for(SERVICE, 2)
    result = run_once(env)
    assert [p[1] for p in result["processed"]] == ["autoreply"]
    assert result["sent"] == [] and result["queued"] == []
    parties = json.loads(cli(env, "referrals", "--json"))[0]["parties"]
    assert {p["email"]: p["status"] for p in parties}["dave@example.test"] == "requested"
    assert len(from_service(mailstack, "dave@example.test")) == 1


def test_check_reports_each_server(mailstack, env) -> None:
    out = json.loads(cli(env, "check", "--json"))
    assert out["ok"] is True
    assert {c["name"] for c in out["checks"]} == {"settings", "database", "imap", "smtp"}
    bad = {**env, "INTROLOOP_IMAP_PASSWORD": "wrong"}
    result = CliRunner().invoke(main, ["--env-file", "/nonexistent", "check"], env=bad)
    assert result.exit_code == 1
    line = next(x for x in result.output.splitlines() if x.startswith("ERR imap"))
    assert "refused the login" in line and "Traceback" not in result.output
