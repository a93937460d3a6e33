"""Print what `introloop inspect --json` makes of every message in the shared corpus.

    .venv/bin/python bench/corpus_inspect_report.py [--corpus PATH] [--list KIND] [--json]

Runs `service.inspect.inspect_files` (the command's own logic, no database) twice:

* **members only**: the shipped default with no member registered, so nobody may introduce;
* **allow \\***: INTROLOOP_ALLOW_SENDERS=* (everyone may introduce), the worst case for
  capture: only the automatic-mail screen and the intro rules stand between a message and
  a referral.

For each it prints corpus kind (index.tsv ``kind``) x our kind, and how long it took.
``--list intro`` prints the files we took for intros (under allow *) with the reason.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.config import load_settings
from service.inspect import inspect_files

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
OURS = ("intro", "reply", "autoreply", "bounce", "ignored", "rejected")


def run(corpus: Path, rows: list[dict[str, str]], allow: str) -> tuple[list[dict], float]:
    """inspect every corpus file with INTROLOOP_ALLOW_SENDERS=`allow`; (results, seconds)."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(None, {
            "address": "referrals@network.example", "network_name": "Corpus",
            "data_dir": tmp, "database_url": None, "allow_senders": allow,
            "secret": "corpus-report-secret-0123456789",
        })
        started = time.perf_counter()
        results = list(inspect_files(settings, [corpus / r["path"] for r in rows]))
        return results, time.perf_counter() - started


def table(rows: list[dict[str, str]], results: list[dict]) -> str:
    """A markdown table: corpus kind x our kind."""
    counts: Counter[tuple[str, str]] = Counter(
        (row["kind"], res["kind"]) for row, res in zip(rows, results, strict=True))
    theirs = sorted({r["kind"] for r in rows})
    lines = ["| corpus kind | files | " + " | ".join(OURS) + " |",
             "|---|---:|" + "---:|" * len(OURS)]
    for kind in theirs:
        total = sum(v for (k, _), v in counts.items() if k == kind)
        lines.append(f"| {kind} | {total} | "
                     + " | ".join(str(counts[(kind, o)] or "") for o in OURS) + " |")
    lines.append(f"| **all** | {len(rows)} | "
                 + " | ".join(str(sum(v for (_, o2), v in counts.items() if o2 == o) or "")
                              for o in OURS) + " |")
    return "\n".join(lines)


def main() -> int:
    """Run both configurations over the corpus and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--list", metavar="KIND", help="list files of our KIND (allow *)")
    parser.add_argument("--json", action="store_true", help="print the counts as JSON")
    args = parser.parse_args()
    index = args.corpus / "index.tsv"
    if not index.is_file():
        print(f"no corpus at {args.corpus}", file=sys.stderr)
        return 1
    with index.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))

    out: dict[str, dict] = {}
    for label, allow in (("members only", ""), ("allow *", "*")):
        results, seconds = run(args.corpus, rows, allow)
        out[label] = {"results": results, "seconds": seconds}
        bad = [r for r in results if not r.get("kind") or not r.get("reason")
               or "could not be read" in r["reason"] or "Traceback" in r["reason"]]
        if not args.json:
            print(f"\n## {label}: {len(rows)} files in {seconds:.1f}s "
                  f"({1000 * seconds / len(rows):.1f} ms/file); "
                  f"{len(bad)} without a clean kind and reason\n")
            print(table(rows, results))
    if args.json:
        print(json.dumps({
            label: {f"{row['kind']}->{res['kind']}": n for (row, res), n in Counter(
                ((r["kind"],), (x["kind"],)) for r, x in zip(rows, v["results"], strict=True)
            ).items()} for label, v in out.items()
        }, indent=2))
    if args.list:
        print(f"\n## files taken as {args.list} (allow *)\n")
        for row, res in zip(rows, out["allow *"]["results"], strict=True):
            if res["kind"] == args.list:
                print(f"{row['kind']:9} {row['path']}\n          {res['reason'][:200]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
