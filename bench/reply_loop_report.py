"""Reading quality through the whole loop, on a blind set of whole reply bodies.

Each item of ``config/classifier/check3.jsonl`` (written blind: see bench/README.md) is a
reply body as a real client sends it: greeting, answer, sign-off, signature, legal footer,
mobile footer, sometimes a gateway banner, and the quoted request in that client's style.
For every item the embedded loop (SQLite, Maildir, frozen clock) records an intro, sends the
feedback request, receives the reply as an e-mail threaded under the request, and reads it
with ``run --once``. Then this script compares with the labels:

* outcome: right on the replies it decided, share sent to a person (unclear), positive <->
  negative swaps, opt-outs invented and missed;
* quote: the text members are shown (``service.core.quote.answer_of`` of the stored reply
  text; the whole stored text where that module does not exist, as before it did) against
  the item's ``quote``, after collapsing whitespace: exact, and "contains the answer";
* dates: for pending items with ``recheck_after``, whether the recheck was timed the
  morning after that date (exact) or within three days of it.

    .venv/bin/python bench/reply_loop_report.py                     # check3.jsonl
    .venv/bin/python bench/reply_loop_report.py --set other.jsonl --errors

It never fails on a figure; it prints them. ``--errors`` lists the misses (do not use that
on a blind set you still want blind: looking at its errors to write rules is training).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from email import message_from_bytes, policy
from email.mime.text import MIMEText
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlmodel import select  # noqa: E402

from service.adapters.local import MaildirMailbox  # noqa: E402
from service.adapters.tables import Outbox, Party, Reply  # noqa: E402
from service.app import FrozenClock, build_loop  # noqa: E402
from service.config import load_settings  # noqa: E402
from service.queries import add_member  # noqa: E402

try:
    from service.core.quote import answer_of
except ImportError:  # before the answer was cut out of the reply, the whole text was quoted
    def answer_of(text: str) -> str:
        return text.strip()

START = datetime(2026, 10, 5, 9, 0, tzinfo=UTC)  # Monday; replies are read on Thursday 8th
ANSWERABLE = ("positive", "negative", "pending", "optout")


def _norm(text: str) -> str:
    return " ".join((text or "").split())


def run(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Push every item through the loop; return what the loop made of each."""
    tmp = Path(tempfile.mkdtemp(prefix="introloop-bench-"))
    st = load_settings(None, {
        "address": "referrals@network.example", "network_name": "Test Network",
        "operator": "ops@network.example", "secret": "b" * 32, "data_dir": tmp,
        "database_url": None, "imap_host": None, "smtp_host": None,
        "feedback_delay": "3d", "reminder_delay": "4d", "max_reminders": 1,
        "pending_recheck": "14d", "timezone": "UTC", "quiet_hours": "", "allow_senders": "",
        "party_weekly_cap": 0, "sender_hourly_limit": 0,
    })
    clock = FrozenClock(START)
    loop = build_loop(st, clock=clock)
    add_member(st, "alice@example.com", "Alice Martin", None, ())
    mailbox = loop.mailbox
    assert isinstance(mailbox, MaildirMailbox)
    for i, _ in enumerate(items):
        mailbox.deliver(
            f"From: Alice Martin <alice@example.com>\r\nTo: Party {i} <p{i}@client.example>, "
            f"Carol Diaz <carol{i}@studio.example>\r\nSubject: Intro {i}\r\n"
            f"Date: Mon, 05 Oct 2026 09:00:00 +0000\r\nMessage-ID: <intro-{i}@example.com>\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\nYou two should talk.\r\n".encode())
    loop.run_once()
    clock.advance(timedelta(days=3))
    loop.run_once()
    with loop.session() as s:
        requests = {o.to_email: o for o in s.exec(select(Outbox).where(
            Outbox.kind == "feedback_request"))}
    clock.advance(timedelta(hours=1))
    for i, item in enumerate(items):
        req = requests[f"p{i}@client.example"]
        sent = message_from_bytes(req.raw, policy=policy.default)
        msg = MIMEText(item["body"], "plain", "utf-8")
        msg["From"] = f"Party {i} <p{i}@client.example>"
        msg["To"] = str(sent["Reply-To"])
        msg["Subject"] = "Re: " + req.subject
        msg["Message-ID"] = f"<reply-{i}@client.example>"
        msg["In-Reply-To"] = msg["References"] = f"<{req.message_id}>"
        msg["Date"] = "Thu, 08 Oct 2026 10:00:00 +0000"
        mailbox.deliver(msg.as_bytes())
    started = time.perf_counter()
    loop.run_once()
    elapsed = time.perf_counter() - started
    out = []
    with loop.session() as s:
        for i, item in enumerate(items):
            party = s.exec(select(Party).where(Party.email == f"p{i}@client.example")).one()
            reply = s.exec(select(Reply).where(Reply.party_id == party.id)).first()
            due = party.next_due_at
            out.append({
                "item": item,
                "outcome": reply.outcome if reply else "none",
                "rule": reply.rule if reply else "",
                "quote": answer_of(reply.text) if reply else "",
                "recheck": (due.date() - timedelta(days=1)) if due and party.status == "pending"
                else None,
            })
    print(f"read {len(items)} replies in {elapsed:.2f} s "
          f"({len(items) / elapsed:.0f} replies/s, whole loop incl. the mail it queues)")
    return out


def report(results: list[dict[str, Any]], errors: bool) -> dict[str, Any]:
    """Print and return the figures."""
    n = len(results)
    decided = [r for r in results if r["outcome"] != "unclear"]
    right = [r for r in decided if r["outcome"] == r["item"]["label"]]
    swaps = [r for r in results if {r["outcome"], r["item"]["label"]} == {"positive",
                                                                         "negative"}]
    invented = [r for r in results if r["outcome"] == "optout" and r["item"]["label"] != "optout"]
    missed = [r for r in results if r["item"]["label"] == "optout" and r["outcome"] != "optout"]
    exact = [r for r in results if _norm(r["quote"]) == _norm(r["item"]["quote"])]
    contains = [r for r in results if _norm(r["item"]["quote"]) in _norm(r["quote"])]
    dated = [r for r in results if r["item"].get("recheck_after")
             and r["item"]["label"] == "pending" and r["outcome"] == "pending"]
    on_day = [r for r in dated if r["recheck"] == date.fromisoformat(r["item"]["recheck_after"])]
    near = [r for r in dated if r["recheck"] is not None and abs(
        (r["recheck"] - date.fromisoformat(r["item"]["recheck_after"])).days) <= 3]
    figures = {
        "replies": n,
        "right_on_decided": len(right) / len(decided) if decided else 0.0,
        "to_a_person": (n - len(decided)) / n if n else 0.0,
        "swaps": len(swaps), "optouts_invented": len(invented), "optouts_missed": len(missed),
        "quotes_exact": len(exact) / n if n else 0.0,
        "quotes_containing_the_answer": len(contains) / n if n else 0.0,
        "dated_pending": len(dated), "recheck_on_the_day": len(on_day),
        "recheck_within_3_days": len(near),
    }
    print(f"replies {n}: right on decided {figures['right_on_decided']:.1%} "
          f"({len(right)}/{len(decided)}), sent to a person {figures['to_a_person']:.1%} "
          f"({n - len(decided)}), pos<->neg swaps {len(swaps)}, opt-outs invented "
          f"{len(invented)}, missed {len(missed)}")
    print(f"quotes exactly as cut by a careful person {figures['quotes_exact']:.1%} "
          f"({len(exact)}/{n}); containing the whole answer "
          f"{figures['quotes_containing_the_answer']:.1%}")
    print(f"pending with a named date, read as pending: {len(dated)}; recheck the morning after "
          f"it {len(on_day)}, within 3 days {len(near)}")
    labels = Counter(r["item"]["label"] for r in results)
    for label in (*ANSWERABLE, "unclear"):
        rows = [r for r in results if r["item"]["label"] == label]
        got = Counter(r["outcome"] for r in rows)
        print(f"  {label:9} n={labels[label]:3}  read as: "
              + ", ".join(f"{k} {v}" for k, v in got.most_common()))
    if errors:
        for r in results:
            it = r["item"]
            if r["outcome"] != it["label"]:
                print(f"OUTCOME {it.get('id')} {it['label']} -> {r['outcome']} ({r['rule']}): "
                      f"{_norm(it['quote'])[:140]}")
        for r in results:
            if _norm(r["quote"]) != _norm(r["item"]["quote"]):
                print(f"QUOTE {r['item'].get('id')}\n  want {_norm(r['item']['quote'])[:200]}"
                      f"\n  got  {_norm(r['quote'])[:200]}")
        for r in dated:
            if r not in on_day:
                print(f"DATE {r['item'].get('id')} want {r['item']['recheck_after']} got "
                      f"{r['recheck']}: {_norm(r['item']['quote'])[:120]}")
    return figures


def main(argv: list[str] | None = None) -> int:
    """Run the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", type=Path, default=REPO / "config" / "classifier" /
                        "check3.jsonl", help="a JSON-lines set with body/label/quote")
    parser.add_argument("--errors", action="store_true", help="list every miss")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args(argv)
    items = [json.loads(line) for line in args.set.read_text(encoding="utf-8").splitlines()
             if line.strip()]
    figures = report(run(items), args.errors)
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
