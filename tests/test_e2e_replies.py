"""Reading replies end to end on real servers (issue 4): every way an answer can come back.

Each test drives `introloop run --once` against Postfix + Dovecot on 127.0.0.1 and looks at
what each person actually received over IMAP.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.servers


def _start(e2e, parties=("bob@example.test", "carol@example.test")):
    e2e.cli("members", "add", "alice@example.test", "--name", "Alice Martin")
    e2e.intro("Alice Martin <alice@example.test>", list(parties), "Intro")
    e2e.stack.wait_for("referrals@example.test", 1)
    e2e.run_once()
    return {p: e2e.wait_from_service(p, 1)[0] for p in parties
            if "ghost" not in p}


def _kinds(result) -> list[tuple[str, str]]:
    return sorted((s[0], s[1]) for s in result["sent"])


def test_reply_by_plus_address_only(e2e) -> None:
    req = _start(e2e)["bob@example.test"]
    # a client that drops In-Reply-To/References: the token in the address still matches
    e2e.answer("bob@example.test", req, "Yes! We already met twice.", threaded=False)
    e2e.stack.wait_for("referrals@example.test", 2)
    result = e2e.run_once()
    assert "token" in result["processed"][0][2]
    assert _kinds(result) == [("appreciation", "alice@example.test"),
                              ("thanks_positive", "bob@example.test")]


def test_reply_by_references_only(e2e) -> None:
    req = _start(e2e)["carol@example.test"]
    # written to the plain service address (the token is lost), but threaded
    e2e.answer("carol@example.test", req, "Sadly it was not a fit for us.",
               to="referrals@example.test")
    e2e.stack.wait_for("referrals@example.test", 2)
    result = e2e.run_once()
    assert "references" in result["processed"][0][2]
    assert _kinds(result) == [("lessons", "alice@example.test"),
                              ("thanks_negative", "carol@example.test")]


def test_reply_from_another_address_is_flagged_not_counted(e2e) -> None:
    req = _start(e2e)["bob@example.test"]
    # Bob's mail is forwarded to another mailbox and answered from there
    e2e.answer("frank@example.test", req, "It went great!")
    e2e.stack.wait_for("referrals@example.test", 2)
    result = e2e.run_once()
    assert "flagged" in result["processed"][0][2]
    assert _kinds(result) == [("unclear_review", "operator@example.test")]
    review = e2e.wait_from_service("operator@example.test", 1)[0]
    assert "frank@example.test" in review.get_body(("plain",)).get_content()


def test_auto_reply_changes_nothing(e2e) -> None:
    req = _start(e2e)["bob@example.test"]
    e2e.answer("bob@example.test", req, "I am out of the office until Monday.",
               Auto_Submitted="auto-replied")
    e2e.stack.wait_for("referrals@example.test", 2)
    result = e2e.run_once()
    assert [p[1] for p in result["processed"]] == ["autoreply"] and result["sent"] == []


def test_hard_bounce_of_a_request_stops_mail_to_that_address(e2e) -> None:
    # Postfix accepts ghost@, then LMTP refuses it: Postfix bounces the request with a DSN
    e2e.stack.add_undeliverable("ghost@example.test")
    _start(e2e, ("ghost@example.test", "carol@example.test"))
    # the request to ghost was accepted, then bounced: the DSN comes back to the service
    e2e.stack.wait_for("referrals@example.test", 2, timeout=30)
    result = e2e.run_once()
    assert [p[1] for p in result["processed"]] == ["bounce"]
    assert "ghost@example.test" in result["processed"][0][2]
    parties = {p["email"]: p["status"] for p in
               __import__("json").loads(e2e.cli("referrals", "--json"))[0]["parties"]}
    assert parties["ghost@example.test"] == "bounced"
    assert result["sent"] == []  # nobody answers a bounce


def test_optout_is_honoured_and_confirmed_once(e2e) -> None:
    req = _start(e2e)["bob@example.test"]
    e2e.answer("bob@example.test", req, "Please stop emailing me.")
    e2e.stack.wait_for("referrals@example.test", 2)
    result = e2e.run_once()
    assert _kinds(result) == [("optout_confirmation", "bob@example.test")]
    # a second "stop" and a new intro with Bob: nothing more reaches Bob
    e2e.answer("bob@example.test", req, "STOP")
    e2e.intro("alice@example.test", ["bob@example.test", "dave@example.test"], "Again")
    e2e.stack.wait_for("referrals@example.test", 4)
    result = e2e.run_once()
    assert ("feedback_request", "dave@example.test") in _kinds(result)
    assert all(to != "bob@example.test" for _, to in _kinds(result))
    assert len(e2e.from_service("bob@example.test")) == 2  # the request and one confirmation


def test_unclear_answer_settled_by_the_operators_one_word_reply(e2e) -> None:
    req = _start(e2e)["carol@example.test"]
    e2e.answer("carol@example.test", req, "Hmm, who is this again?")
    e2e.stack.wait_for("referrals@example.test", 2)
    result = e2e.run_once()
    assert _kinds(result) == [("unclear_review", "operator@example.test")]
    review = e2e.wait_from_service("operator@example.test", 1)[0]
    e2e.answer("operator@example.test", review, "positive")
    e2e.stack.wait_for("referrals@example.test", 3)
    result = e2e.run_once()
    assert "settled as positive" in result["processed"][0][2]
    assert _kinds(result) == [("appreciation", "alice@example.test"),
                              ("thanks_positive", "carol@example.test")]
