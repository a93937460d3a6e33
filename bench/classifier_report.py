"""Score the reply classifier on the held-out sets in ../shared and time it.

    .venv/bin/python bench/classifier_report.py               # dev set + Appendix A
    .venv/bin/python bench/classifier_report.py --rules-only  # as if model.json were missing
    .venv/bin/python bench/classifier_report.py --errors      # also list the wrong items

Held-out sets (never trained on; bench/train_classifier.py refuses near-copies of them):
our own ``config/classifier/check.jsonl`` (68 replies written after the rules and model
were frozen) and ``check2.jsonl`` (150 replies written blind, by a writer who saw neither
the training data nor the classifier, before the second training round), and, when
../shared exists, ``shared/devset/replies.jsonl`` and the 64 "fresh" replies of
Appendix A in ``shared/notes/classifier.md``. Prints accuracy on answered replies,
macro-F1, the share sent to unclear, the confusion matrix, positive<->negative
confusions and missed opt-outs, then per-reply latency and load time. Benchmarks print;
they assert nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.classifier_data import load_classifier  # noqa: E402
from service.core.classify import Classifier  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
CHECK = REPO / "config" / "classifier" / "check.jsonl"
CHECK2 = REPO / "config" / "classifier" / "check2.jsonl"
LABELS = ("positive", "negative", "pending", "optout", "unclear")


def load_devset() -> list[dict[str, str]]:
    """The labelled dev set."""
    path = SHARED / "devset" / "replies.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def load_appendix_a() -> list[dict[str, str]]:
    """The 64 "fresh" replies of notes/classifier.md, Appendix A."""
    text = (SHARED / "notes" / "classifier.md").read_text(encoding="utf-8")
    body = text.split("## Appendix A", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] in LABELS:
            rows.append({"label": cells[0], "lang": cells[1], "text": cells[2]})
    return rows


def macro_f1(gold: Sequence[str], pred: Sequence[str]) -> float:
    """Macro-averaged F1 over the five labels (unclear included, as a class)."""
    scores = []
    for label in LABELS:
        tp = sum(g == p == label for g, p in zip(gold, pred, strict=True))
        fp = sum(p == label != g for g, p in zip(gold, pred, strict=True))
        fn = sum(g == label != p for g, p in zip(gold, pred, strict=True))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores)


def report(name: str, rows: Sequence[dict[str, str]], clf: Classifier, errors: bool) -> None:
    """Print the figures for one labelled set."""
    gold = [r["label"] for r in rows]
    verdicts = [clf.classify(r["text"]) for r in rows]
    pred = [v.outcome.value for v in verdicts]
    pairs = list(zip(gold, pred, strict=True))
    answered = [(g, p) for g, p in pairs if p != "unclear"]
    answerable = [(g, p) for g, p in pairs if g != "unclear"]
    acc_ans = sum(g == p for g, p in answered) / max(1, len(answered))
    print(f"\n== {name}: {len(rows)} replies {dict(Counter(gold))}")
    print(f"accuracy on answered      {acc_ans:.3f}  ({len(answered)} answered)")
    print(f"accuracy overall          {sum(g == p for g, p in pairs) / len(pairs):.3f}")
    print(f"macro-F1                  {macro_f1(gold, pred):.3f}")
    print(
        f"sent to unclear           {sum(p == 'unclear' for p in pred) / len(pred):.1%} "
        f"of all; {sum(p == 'unclear' for _, p in answerable) / max(1, len(answerable)):.1%}"
        f" of answerable (gold != unclear)"
    )
    pos_neg = sum({g, p} == {"positive", "negative"} for g, p in pairs)
    missed = sum(g == "optout" != p for g, p in pairs)
    false_opt = sum(p == "optout" != g for g, p in pairs)
    print(f"positive<->negative       {pos_neg}")
    print(f"missed opt-outs           {missed} (false opt-outs {false_opt})")
    print("confusion (rows gold, columns predicted):")
    print("            " + " ".join(f"{lbl[:8]:>8}" for lbl in LABELS))
    for g in LABELS:
        counts = [sum(1 for gg, pp in pairs if gg == g and pp == p) for p in LABELS]
        print(f"  {g:<9} " + " ".join(f"{c:>8}" for c in counts))
    langs = sorted({r["lang"] for r in rows})
    per_lang = []
    for lang in langs:
        idx = [i for i, r in enumerate(rows) if r["lang"] == lang]
        ans = [i for i in idx if pred[i] != "unclear"]
        ok = sum(gold[i] == pred[i] for i in ans)
        per_lang.append(f"{lang} {ok}/{len(ans)} answered right, {len(idx) - len(ans)} unclear")
    print("per language: " + "; ".join(per_lang))
    if errors:
        for r, p, v in zip(rows, pred, verdicts, strict=True):
            if p != r["label"]:
                print(f"  {r['label']:>8} -> {p:<8} [{v.rule}] {r['text']}")


def timing(clf: Classifier, texts: Sequence[str], rules_only: bool) -> None:
    """Per-reply latency (in process) and load time (fresh interpreter)."""
    clf.classify(texts[0])
    samples = []
    for _ in range(3):
        for text in texts:
            start = time.perf_counter()
            clf.classify(text)
            samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    p95 = samples[int(len(samples) * 0.95)]
    print(
        f"\nlatency per reply: median {statistics.median(samples):.2f} ms, p95 {p95:.2f} ms "
        f"({len(samples)} calls)"
    )
    start = time.perf_counter()
    load_classifier.__wrapped__()  # bypass the cache: parse + compile once more
    print(f"load (parse vocabulary + weights, compile): {time.perf_counter() - start:.3f} s")
    code = (
        "import time; t=time.perf_counter(); from service.classifier_data import "
        "load_classifier; load_classifier().classify('it went well'); "
        "print(time.perf_counter()-t)"
    )
    if rules_only:
        return
    walls = []
    for _ in range(3):
        start = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
        )
        walls.append((time.perf_counter() - start, float(out.stdout.strip())))
    wall, inside = sorted(walls)[1]
    print(
        f"fresh process to first verdict: {wall:.3f} s wall ({inside:.3f} s import+load+classify)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Print the report; exit 0 with a message when ../shared is absent."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rules-only", action="store_true", help="ignore model.json")
    ap.add_argument("--errors", action="store_true", help="list misclassified replies")
    args = ap.parse_args(argv)
    clf = load_classifier()
    if args.rules_only:
        clf = Classifier(clf_vocabulary())
    elif clf.model is None:
        print("model.json missing: rules only")
    print(
        "mode:",
        "rules only" if clf.model is None else f"rules + {clf.model.name}",
        f"thresholds {clf.thresholds}",
    )
    check = [json.loads(line) for line in CHECK.read_text(encoding="utf-8").splitlines() if line]
    report("own check set (config/classifier/check.jsonl)", check, clf, args.errors)
    if CHECK2.is_file():
        check2 = [json.loads(x) for x in CHECK2.read_text(encoding="utf-8").splitlines() if x]
        report("blind check set (config/classifier/check2.jsonl)", check2, clf, args.errors)
    if not (SHARED / "devset" / "replies.jsonl").is_file():
        print(f"\nno held-out data at {SHARED}: dev set and Appendix A not reported")
        timing(clf, [r["text"] for r in check], args.rules_only)
        return 0
    dev = load_devset()
    report("dev set (shared/devset/replies.jsonl)", dev, clf, args.errors)
    if (SHARED / "notes" / "classifier.md").is_file():
        report("fresh set (notes/classifier.md Appendix A)", load_appendix_a(), clf, args.errors)
    timing(clf, [r["text"] for r in dev], args.rules_only)
    return 0


def clf_vocabulary() -> dict[str, object]:
    """The parsed vocabulary file (for the rules-only mode)."""
    import tomllib

    with (REPO / "config" / "classifier" / "vocabulary.toml").open("rb") as fh:
        return tomllib.load(fh)


if __name__ == "__main__":
    sys.exit(main())
