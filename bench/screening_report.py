"""Print how the automatic-mail screen classifies the shared corpus.

    .venv/bin/python bench/screening_report.py [--rules] [--corpus PATH]

Prints corpus kind (index.tsv ``kind``) x our verdict, then, with ``--rules``, which
rule decided, and two quality figures: flufl.bounce's expected addresses found exactly,
and hard/soft agreement with the DSN status class sisimai's tables give (we call mailbox
full soft even with 5.2.2, so some disagreement there is by design).
"""

from __future__ import annotations

import argparse
import csv
import email
import email.policy
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.core.screening import screen

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
VERDICTS = ("bounce", "autoreply", "ignored", "none", "error")


def main() -> int:
    """Run the screen over every corpus message and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--rules", action="store_true", help="also print verdicts by rule")
    args = parser.parse_args()
    index = args.corpus / "index.tsv"
    if not index.is_file():
        print(f"no corpus at {args.corpus}", file=sys.stderr)
        return 1
    with index.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))

    table: Counter[tuple[str, str]] = Counter()
    by_rule: Counter[tuple[str, str]] = Counter()
    results = {}
    started = time.perf_counter()
    for row in rows:
        raw = (args.corpus / row["path"]).read_bytes()
        try:
            got = screen(email.message_from_bytes(raw, policy=email.policy.default), raw)
            verdict = got.kind.value if got else "none"
            rule = got.reason.split(":", 1)[0] if got else "-"
        except Exception:  # screen() promises never to raise; count it if it does
            got, verdict, rule = None, "error", "error"
        table[(row["kind"], verdict)] += 1
        by_rule[(row["kind"], rule)] += 1
        results[row["path"]] = got
    elapsed = time.perf_counter() - started

    kinds = sorted({r["kind"] for r in rows})
    print(f"corpus: {args.corpus} ({len(rows)} messages, {elapsed:.1f} s)\n")
    print(f"{'corpus kind':<12}" + "".join(f"{v:>11}" for v in VERDICTS) + f"{'total':>8}")
    for kind in kinds:
        cells = [table[(kind, v)] for v in VERDICTS]
        print(f"{kind:<12}" + "".join(f"{c:>11}" for c in cells) + f"{sum(cells):>8}")
    totals = [sum(table[(k, v)] for k in kinds) for v in VERDICTS]
    print(f"{'total':<12}" + "".join(f"{c:>11}" for c in totals) + f"{sum(totals):>8}")

    if args.rules:
        print("\nby rule:")
        for (kind, rule), count in sorted(by_rule.items()):
            print(f"  {kind:<10} {rule:<22} {count:>5}")

    flufl = args.corpus / "flufl.bounce" / "expected.tsv"
    if flufl.is_file():
        expected: dict[str, set[str]] = {}
        for line in flufl.read_text(encoding="utf-8").splitlines():
            cells = line.split("\t")
            if line.startswith("#") or cells[0] == "file" or len(cells) < 4 or not cells[3]:
                continue
            expected.setdefault(cells[0], set()).update(
                a.strip().lower() for a in cells[3].split(",")
            )
        exact = sum(
            1
            for name, want in expected.items()
            if (got := results.get(f"flufl.bounce/tests/data/{name}")) and set(got.failed) == want
        )
        print(f"\nflufl.bounce expected addresses found exactly: {exact}/{len(expected)}")

    sisimai = args.corpus / "sisimai-set-of-emails" / "expected.tsv"
    if sisimai.is_file():
        five: dict[str, bool] = {}
        for line in sisimai.read_text(encoding="utf-8").splitlines():
            cells = line.split("\t")
            if line.startswith("#") or cells[0] == "file" or len(cells) < 3:
                continue
            five[cells[0]] = five.get(cells[0], False) or cells[2].startswith("5")
        agree = Counter()
        for name, is_five in five.items():
            got = results.get(f"sisimai-set-of-emails/{name}")
            if got is not None and got.kind.value == "bounce":
                agree[(is_five, got.permanent)] += 1
        print("sisimai status class vs our permanent flag (bounces only):")
        for (is_five, permanent), count in sorted(agree.items()):
            print(
                f"  status {'5.x.x' if is_five else '4.x.x'} -> "
                f"{'hard' if permanent else 'soft'}: {count}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
