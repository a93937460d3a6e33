"""How much the monthly-summary check costs per scheduler tick, and what building them costs.

Seeds a SQLite database with MEMBERS members (a third of them idle) and REFERRALS referrals
spread over 13 months, then times, under a frozen clock on 1 November 09:30 UTC:
  - the ticks of the 1st (build every member's summary and the operator's, queue them),
  - the ticks after it (each reads the members and summary_log, nothing else),
  - rebuilding every summary without the log (what every tick cost before summary_log existed).

    .venv/bin/python bench/summary_tick.py [MEMBERS] [REFERRALS]
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from service.adapters.tables import Member, Party, Referral
from service.app import FrozenClock, build_loop
from service.config import load_settings
from service.core.summary import Month


def main(members: int = 1000, referrals: int = 20000) -> None:
    """Seed, tick, print figures."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-summary-"))
    settings = load_settings(None, {
        "address": "referrals@network.example", "network_name": "Bench", "secret": "x" * 32,
        "operator": "ops@network.example", "data_dir": tmp, "database_url": None,
        "imap_host": None, "smtp_host": None, "timezone": "UTC", "quiet_hours": "",
        "allow_senders": "", "summary_hour": 9,
    })
    clock = FrozenClock(datetime(2026, 11, 1, 9, 30, tzinfo=UTC))
    loop = build_loop(settings, clock=clock)
    rng = random.Random(7)
    emails = [f"m{n}@example.com" for n in range(members)]
    active = emails[: members * 2 // 3]
    zones = [None, "Europe/Berlin", "America/New_York", "Pacific/Auckland"]
    start = datetime(2025, 10, 1, tzinfo=UTC)
    with loop.session() as s:
        for e in emails:
            s.add(Member(email=e, name=e.split("@")[0], timezone=rng.choice(zones)))
        s.flush()
        for _ in range(referrals):
            when = start + timedelta(seconds=rng.randrange(396 * 86400))
            r = Referral(referrer_email=rng.choice(active), intro_key=uuid.uuid4().hex,
                         introduced_at=when)
            s.add(r)
            s.flush()
            for k in range(2):
                outcome = rng.choice([None, None, "positive", "negative", "pending"])
                s.add(Party(referral_id=r.id, email=f"p{rng.randrange(5000)}.{k}@x.example",
                            status="answered" if outcome else "requested", outcome=outcome,
                            outcome_at=when + timedelta(days=4) if outcome else None))
    statements: list[str] = []
    sa.event.listen(loop.engine, "before_cursor_execute",
                    lambda *a: statements.append(a[2]))

    # the 1st: each tick builds at most `summaries_per_tick` summaries; tick until all are done
    ticks, queued, first, slowest = 0, 0, 0.0, 0.0
    while True:
        t0 = time.perf_counter()
        got = len(loop.queue_monthly_summaries().queued)
        took = time.perf_counter() - t0
        if not got and ticks and took < 1:
            break
        ticks, queued, first, slowest = ticks + 1, queued + got, first + took, max(slowest, took)
        clock.current += timedelta(minutes=1)
    first_statements = len(statements)

    later, counts = [], []
    for i in range(20):
        clock.current += timedelta(minutes=1 + i)
        statements.clear()
        t0 = time.perf_counter()
        assert loop.queue_monthly_summaries().queued == []
        later.append(time.perf_counter() - t0)
        counts.append(len(statements))

    t0 = time.perf_counter()
    built = loop.summaries(Month(2026, 10))
    rebuild = time.perf_counter() - t0

    print(f"members={members} (idle {members - len(active)}) referrals={referrals} parties="
          f"{2 * referrals}")
    print(f"the 1st: {queued} summaries queued in {ticks} ticks of at most "
          f"{loop.summaries_per_tick} members, {first:.1f} s in all, slowest tick "
          f"{slowest:.1f} s, {first_statements} SQL statements")
    print(f"later ticks: median {statistics.median(later) * 1000:.1f} ms, "
          f"{statistics.median(counts):.0f} SQL statements each")
    print(f"rebuilding all {len(built)} member summaries (the old per-tick cost): "
          f"{rebuild * 1000:.0f} ms")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
