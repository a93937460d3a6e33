"""Monthly summaries end to end on real servers: intros and replies over SMTP, the service's
real `introloop run --once` under a frozen system clock (time-machine) moved across the 1st,
and every person's IMAP INBOX read to count what they received.

Alice is in Berlin, Erin in Auckland (the 1st starts there 11 hours before UTC's), Dave in
the network's UTC; Frank (Los Angeles) does nothing in October and must get nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine

pytestmark = pytest.mark.servers

ALICE, DAVE, ERIN, FRANK = (f"{n}@example.test" for n in ("alice", "dave", "erin", "frank"))
BOB, CAROL, OPERATOR = "bob@example.test", "carol@example.test", "operator@example.test"


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def summaries_in(e2e, user: str) -> list[str]:
    """Subjects of the monthly summaries in `user`'s INBOX (our Message-IDs name the kind)."""
    return [str(m["Subject"]) for m in e2e.from_service(user)
            if str(m["Message-ID"]).startswith(("<monthly-summary.", "<network-summary."))]


def body_of(e2e, user: str, subject_start: str) -> str:
    """The plain-text part of the message whose subject starts with `subject_start`."""
    msg = next(m for m in e2e.from_service(user) if str(m["Subject"]).startswith(subject_start))
    return msg.get_body(("plain",)).get_content()


def run_at(e2e, when: datetime) -> dict:
    # tick=True: time flows on from `when`, so socket timeouts and the servers behave normally
    with time_machine.travel(when, tick=True):
        return e2e.run_once()


def test_scheduler_sends_each_member_one_summary_across_the_first(e2e) -> None:
    for email, name, tz in ((ALICE, "Alice Martin", "Europe/Berlin"), (DAVE, "Dave Okafor", ""),
                            (ERIN, "Erin Walsh", "Pacific/Auckland"),
                            (FRANK, "Frank Li", "America/Los_Angeles")):
        e2e.cli("members", "add", email, "--name", name, *(["--timezone", tz] if tz else []))

    zoe = e2e.stack.add_user("zoe@example.test")
    e2e.intro(f"Alice Martin <{ALICE}>", [f"Bob <{BOB}>", f"Carol <{CAROL}>"], "Bob, meet Carol")
    e2e.intro(f"Dave Okafor <{DAVE}>", [f"Erin Walsh <{ERIN}>", f"Zoe <{zoe}>"], "Erin <> Zoe")
    e2e.stack.wait_for("referrals@example.test", 2)
    first = run_at(e2e, at(2026, 10, 20, 10))  # records both; the delay is 0s: asks at once
    assert sorted(kind for _, kind, _ in first["processed"]) == ["intro", "intro"]
    answers = {BOB: "It went really well, we signed a contract!",
               CAROL: "Nice people, but there is no budget this year.",
               ERIN: "Yes, great intro, thank you!",
               zoe: "Worked out well, we meet again next week."}
    for user, text in answers.items():
        (request,) = e2e.wait_from_service(user, 1)
        e2e.answer(user, request, text)
    e2e.stack.wait_for("referrals@example.test", 6)
    second = run_at(e2e, at(2026, 10, 20, 12))
    assert sorted(kind for _, kind, _ in second["processed"]) == ["reply"] * 4

    # hour by hour across the 1st, with a restart of nothing but the process (each run --once
    # is a fresh process state on the same database), and ticks long after
    sent_at: dict[str, list[tuple[str, datetime]]] = {}
    ticks = [at(2026, 10, 31, 12) + timedelta(hours=h) for h in range(0, 36)]
    ticks += [at(2026, 11, 2, 9), at(2026, 11, 15, 9)]
    for t in ticks:
        for kind, to, _subject in run_at(e2e, t)["sent"]:
            if kind in ("monthly_summary", "network_summary"):
                sent_at.setdefault(to, []).append((kind, t))
    assert sent_at == {
        ERIN: [("monthly_summary", at(2026, 10, 31, 20))],  # 1 Nov, 09:00 in Auckland
        ALICE: [("monthly_summary", at(2026, 11, 1, 8))],  # 09:00 CET
        DAVE: [("monthly_summary", at(2026, 11, 1, 9))],
        OPERATOR: [("network_summary", at(2026, 11, 1, 9))],
    }

    # what each person finds in their INBOX: exactly one summary each, none for Frank
    for user in (ALICE, DAVE, ERIN, OPERATOR):
        e2e.wait_from_service(user, 1)
    alice = summaries_in(e2e, ALICE)
    assert alice == ["Your October: 1 introduction, 1 person says it worked"]
    assert summaries_in(e2e, DAVE) == ["Your October: 1 introduction, 2 people say it worked"]
    assert summaries_in(e2e, ERIN) == ["Your October: 1 introduction made for you"]
    assert len(summaries_in(e2e, OPERATOR)) == 1
    assert summaries_in(e2e, OPERATOR)[0].startswith("Test Network in October 2026: 2 intro")
    assert summaries_in(e2e, FRANK) == []

    text = body_of(e2e, ALICE, "Your October")
    assert '"It went really well, we signed a contract!"' in text
    assert "Budget got in the way" in text and "YOUR LAST 12 MONTHS" in text
    erin = body_of(e2e, ERIN, "Your October")
    assert "an introduction another member made for you" in erin and "AT A GLANCE" not in erin
    assert "Dave Okafor introduced you to Zoe" in erin and "a short thank-you to Dave" in erin
