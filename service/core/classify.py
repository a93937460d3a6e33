"""Read the outcome of an introduction from a reply's new text.

Pure: the vocabulary and the model weights arrive as already-parsed data (see
``service/classifier_data.py`` for the loader and ``config/classifier/`` for the data);
nothing here reads files, the network or the clock.

Three layers, in order:

1. **Rules, high precision.** Opt-out phrases in five languages (an opt-out always wins),
   whole-reply short answers read against our question "Did it work out?" ("yes", "nope",
   "not yet", "ok", 👍, 🤔), then phrase cues for positive / negative / pending with
   negation handled by longest-match ("didn't work out" swallows "work out") and mixed
   replies by clause ("great guy, but no budget": the clause after "but" decides).
2. **A small model.** Multinomial logistic regression over word, bigram, negation-scope and
   character n-gram features, trained offline by ``bench/train_classifier.py`` on the
   labelled replies in ``config/classifier/train.jsonl``; applied here in pure Python
   (a few hundred dictionary look-ups), so no numpy at run time.
3. **Agreement and thresholds.** A phrase cue is trusted only when the model does not
   lean to the opposite polarity; the model alone is trusted only above per-class
   thresholds that were chosen by cross-validation for the fewest positive/negative
   confusions; the model alone never opts anyone out (that takes explicit words).
   Anything else is ``unclear``: a person decides, we never guess.

The model is a logistic regression over word features, optionally blended with a second one
over a multilingual sentence embedding (`EmbeddingModel`; the edge injects the embedder).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from service.core.model import Classification, Outcome

# Order of the model's classes in the weight vectors (fixed by the training script).
MODEL_LABELS: tuple[Outcome, ...] = (
    Outcome.POSITIVE,
    Outcome.NEGATIVE,
    Outcome.PENDING,
    Outcome.OPTOUT,
    Outcome.UNCLEAR,
)
# Bumped whenever `features()` changes meaning, so stale weights are detected.
FEATURE_VERSION = 1
PHRASE_LABELS: tuple[Outcome, ...] = (Outcome.NEGATIVE, Outcome.POSITIVE, Outcome.PENDING)
_OPPOSITE = {Outcome.POSITIVE: Outcome.NEGATIVE, Outcome.NEGATIVE: Outcome.POSITIVE}

# Defaults used when the weights file carries no thresholds (or there is no model).
DEFAULT_THRESHOLDS: dict[str, float] = {
    "positive": 0.6,
    "negative": 0.6,
    "pending": 0.5,
    "unclear": 0.4,
    "optout": 0.6,
    # A phrase cue is accepted when the model gives its label at least this probability...
    "rule_floor": 0.15,
    # ...and is vetoed when the model puts this much on the opposite polarity.
    "rule_veto": 0.5,
}

# Confidence reported for rule decisions (the model may raise it when it agrees).
_CONF_OPTOUT = 0.99
_CONF_SHORT = 0.95
_CONF_PHRASE = 0.9
_CONF_PHRASE_RESOLVED = 0.8

_SKIN_TONES_AND_JOINERS = re.compile("[\U0001f3fb-\U0001f3ff\ufe0e\ufe0f\u200d\u20e3]")
_TRANSLATE = str.maketrans(
    {
        "\u2019": "'",
        "\u2018": "'",
        "\u02bc": "'",
        "`": "'",
        "\u00b4": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u00ab": '"',
        "\u00bb": '"',
        "\u2013": "-",
        "\u2014": " - ",
        "\u00a0": " ",
        "\u00bf": " ",  # ¿ and ¡ open Spanish questions/exclamations; the closing mark stays
        "\u00a1": " ",
    }
)
_WS = re.compile(r"\s+")
_TOKEN = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*|\d+|[^\w\s]")
_SHORT_STRIP = re.compile(r"[^\w\s'?]")
_CLAUSE = re.compile(r"[^.,;:!?\n]+")


def normalize(text: str) -> str:
    """Casefold, strip accents and unify quotes/dashes/whitespace, as the vocabulary expects.

    Emoji survive (minus skin tones and variation selectors) so they can be looked up.
    """
    text = unicodedata.normalize("NFKC", text).translate(_TRANSLATE)
    text = _SKIN_TONES_AND_JOINERS.sub("", text)
    decomposed = unicodedata.normalize("NFD", text.casefold())
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _WS.sub(" ", unicodedata.normalize("NFC", stripped)).strip()


def _is_emoji(ch: str) -> bool:
    # Symbols ("So") cover emoji and dingbats; "Sk" would add modifier letters we do not want.
    return unicodedata.category(ch) == "So"


def tokenize(norm: str) -> list[str]:
    """Word, number, emoji and '?'/'!' tokens of a normalised text (other punctuation is '.')."""
    out: list[str] = []
    for tok in _TOKEN.findall(norm):
        if tok[0].isalnum() or tok in ("?", "!") or _is_emoji(tok):
            out.append(tok)
        else:
            out.append(".")
    return out


def features(norm: str, negators: frozenset[str], contrast: frozenset[str]) -> set[str]:
    """Binary features of a normalised reply, shared by the training script and `classify`.

    Word unigrams and bigrams (with message start/end marks), words in the scope of a
    negator (up to three words, cut by punctuation or a contrast word: "not bad" differs
    from "bad"), character 3–5-grams inside words (for inflections in es/de/fr/nl and
    typos), emoji, '?'/'!', the first word and a length bucket.
    """
    toks = tokenize(norm)
    words = [t for t in toks if t[0].isalnum()]
    feats: set[str] = set()
    scope = 0
    prev = "<s>"
    for tok in toks:
        if not tok[0].isalnum():
            if tok in ("?", "!"):
                feats.add("p:" + tok)
            elif tok != ".":
                feats.add("e:" + tok)
            scope = 0
            prev = "<s>" if tok in (".", "?", "!") else prev
            continue
        feats.add("w:" + tok)
        feats.add("b:" + prev + " " + tok)
        prev = tok
        if scope > 0:
            feats.add("n:" + tok)
            scope -= 1
        if tok in contrast:
            scope = 0
        if tok in negators or tok.endswith("n't"):
            scope = 3
        padded = f" {tok} "
        for n in (3, 4, 5):
            for i in range(len(padded) - n + 1):
                feats.add("c:" + padded[i : i + n])
    if words:
        feats.add("b:" + prev + " </s>")
        feats.add("first:" + words[0])
    n_words = len(words)
    bucket = (
        next(b for b, limit in ((1, 1), (2, 2), (3, 5), (4, 10), (5, 20)) if n_words <= limit)
        if n_words <= 20
        else 6
    )
    feats.add(f"len:{bucket}")
    if not words and any(_is_emoji(t) for t in toks):
        feats.add("emoji-only")
    return feats


@dataclass(frozen=True, slots=True)
class Cue:
    """A phrase rule that matched: which class, language and entry, and where."""

    label: Outcome
    lang: str
    name: str
    start: int
    end: int
    # A weak cue ("great call", a leading "yes,") counts only when the model agrees.
    weak: bool = False

    @property
    def rule(self) -> str:
        """The rule's name as it appears in a Classification."""
        return f"rule:{self.label.value}:{self.lang}:{self.name}"


@dataclass(frozen=True, slots=True)
class _Pattern:
    label: Outcome
    lang: str
    name: str
    regex: re.Pattern[str]
    weak: bool = False


@dataclass(slots=True)
class Analysis:
    """Everything `Classifier.analyse` saw; `classify` keeps only the verdict.

    ``settled`` is a verdict reached before the model is consulted (empty reply, opt-out,
    short answer or emoji); otherwise `Classifier.decide` combines ``decided`` (the phrase
    cue that won, with its confidence) and ``probabilities`` under the thresholds.
    """

    normalized: str
    language: str | None
    verdict: Classification
    settled: Classification | None = None
    cues: list[Cue] = field(default_factory=list)
    decided: tuple[Outcome, Cue, float] | None = None
    probabilities: dict[Outcome, float] | None = None


def _short_key(norm: str) -> str:
    """Reduce a normalised reply to its words (and '?'), for short-answer look-up."""
    text = "".join(" " if _is_emoji(ch) else ch for ch in norm)
    return _WS.sub(" ", _SHORT_STRIP.sub(" ", text)).strip(" '")


def _phrase_alternation(phrases: Iterable[str]) -> re.Pattern[str]:
    # Longest first, so "thank you so much" is removed whole rather than "thank you".
    keys = sorted({_short_key(normalize(p)) for p in phrases if p.strip()}, key=len, reverse=True)
    return re.compile(r"\b(?:" + "|".join(re.escape(k) for k in keys) + r")\b")


class LinearModel:
    """Multinomial logistic regression over sparse binary features, in pure Python."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        """Build from the parsed weights file (``labels``, ``bias``, ``weights``, ...)."""
        labels = tuple(Outcome(lbl) for lbl in data["labels"])
        if labels != MODEL_LABELS:
            raise ValueError(f"model labels {labels} differ from {MODEL_LABELS}")
        self.bias: tuple[float, ...] = tuple(float(b) for b in data["bias"])
        self.weights: dict[str, tuple[float, ...]] = {
            name: tuple(float(w) for w in row) for name, row in data["weights"].items()
        }
        self.name: str = str(data.get("name", "lr"))

    def predict(self, feats: Iterable[str]) -> dict[Outcome, float]:
        """Class probabilities for one reply's features (unknown features are ignored)."""
        rows = [self.weights[f] for f in feats if f in self.weights]
        # The training script L2-normalises each sample over its known features; same here.
        scale = 1.0 / math.sqrt(len(rows)) if rows else 0.0
        scores = list(self.bias)
        for row in rows:
            for i, w in enumerate(row):
                scores[i] += w * scale
        top = max(scores)
        exps = [math.exp(s - top) for s in scores]
        total = sum(exps)
        return {label: e / total for label, e in zip(MODEL_LABELS, exps, strict=True)}


class EmbeddingModel:
    """Multinomial LR over a sentence embedding (multilingual-e5-small), in pure Python.

    A second voter beside `LinearModel`: the embedding reads meaning across the five
    languages where word features see only words ("about as reliable as my train home").
    Its probabilities are blended with the LR's by ``blend`` (the LR's share), a weight
    chosen by cross-validation in bench/train_classifier.py, which also chose the
    thresholds that apply when both voters are present.
    """

    def __init__(self, data: Mapping[str, Any]) -> None:
        """Build from the parsed ``embedding.json`` (``labels``, ``bias``, ``weights``...)."""
        labels = tuple(Outcome(lbl) for lbl in data["labels"])
        if labels != MODEL_LABELS:
            raise ValueError(f"embedding model labels {labels} differ from {MODEL_LABELS}")
        self.bias: tuple[float, ...] = tuple(float(b) for b in data["bias"])
        self.weights: tuple[tuple[float, ...], ...] = tuple(
            tuple(float(w) for w in row) for row in data["weights"])
        self.blend = float(data.get("blend", 0.5))
        self.thresholds: dict[str, float] = {
            k: float(v) for k, v in data.get("thresholds", {}).items()}
        self.name: str = str(data.get("name", "e5"))

    def predict(self, vector: Sequence[float]) -> dict[Outcome, float]:
        """Class probabilities for one embedding vector."""
        scores = [b + sum(w * x for w, x in zip(row, vector, strict=True))
                  for b, row in zip(self.bias, self.weights, strict=True)]
        top = max(scores)
        exps = [math.exp(v - top) for v in scores]
        total = sum(exps)
        return {label: e / total for label, e in zip(MODEL_LABELS, exps, strict=True)}


def feature_spec_hash(negators: Iterable[str], contrast: Iterable[str]) -> str:
    """Fingerprint of what `features()` depends on; stored with the weights to catch staleness."""
    spec = {"version": FEATURE_VERSION, "negators": sorted(negators), "contrast": sorted(contrast)}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


class Classifier:
    """Classifies a reply's new text into an Outcome, with the rule that decided.

    Build it from the parsed vocabulary (``config/classifier/vocabulary.toml``) and,
    optionally, the parsed model weights (``config/classifier/model.json``). Without a
    model, only the rules decide and everything else is ``unclear``: lower coverage,
    same precision.
    """

    def __init__(
        self,
        vocabulary: Mapping[str, Any],
        model: Mapping[str, Any] | None = None,
        thresholds: Mapping[str, float] | None = None,
        *,
        embedding: Mapping[str, Any] | None = None,
        embed: Callable[[str], Sequence[float]] | None = None,
    ) -> None:
        """Compile the vocabulary; ``thresholds`` override the model file's (for experiments).

        ``embedding`` (the parsed embedding.json) and ``embed`` (text -> vector, the
        embedder the edge wires in) add the second voter; both or neither.
        """
        self.negators = frozenset(normalize(w) for w in vocabulary.get("negators", ()))
        contrast_words = [normalize(w) for w in vocabulary.get("contrast", ())]
        self.contrast = frozenset(w for w in contrast_words if " " not in w)
        self._contrast_re = (
            re.compile(
                r"(?:^|[\s,;:.!?(\-])(?:" + "|".join(re.escape(w) for w in contrast_words) + r")\b"
            )
            if contrast_words
            else None
        )
        self._fillers = _phrase_alternation(vocabulary.get("fillers", ()))
        self._stopwords: dict[str, frozenset[str]] = {}
        self._optout: list[_Pattern] = []
        self._traps: list[re.Pattern[str]] = []
        self._phrases: list[_Pattern] = []
        self._short: dict[str, tuple[Outcome, str]] = {}
        for lang, spec in vocabulary.get("languages", {}).items():
            self._stopwords[lang] = frozenset(normalize(w) for w in spec.get("stopwords", ()))
            bare = frozenset(spec.get("optout_bare", ()))
            for name, rx in spec.get("optout", {}).items():
                self._optout.append(_Pattern(Outcome.OPTOUT, lang, name, re.compile(rx),
                                             weak=name in bare))
            self._traps.extend(re.compile(rx) for rx in spec.get("optout_traps", {}).values())
            weak = frozenset(spec.get("weak", ()))
            for label in PHRASE_LABELS:
                for name, rx in spec.get(label.value, {}).items():
                    self._phrases.append(
                        _Pattern(label, lang, name, re.compile(rx), weak=name in weak)
                    )
            for label_name, phrases in spec.get("short", {}).items():
                label = Outcome(label_name)
                for phrase in phrases:
                    key = _short_key(normalize(phrase))
                    known = self._short.get(key)
                    if known is not None and known[0] != label:
                        raise ValueError(f"short answer {phrase!r} is both {known[0]} and {label}")
                    self._short.setdefault(key, (label, lang))
        self._emoji: dict[str, Outcome] = {}
        for label_name, emojis in vocabulary.get("emoji", {}).items():
            for e in emojis:
                self._emoji[normalize(e)] = Outcome(label_name)

        self.model: LinearModel | None = LinearModel(model) if model else None
        self.model_stale = bool(
            model and model.get("feature_spec") != feature_spec_hash(self.negators, self.contrast)
        )
        self.embedding: EmbeddingModel | None = (
            EmbeddingModel(embedding) if embedding and embed and model else None)
        self.embed = embed if self.embedding is not None else None
        merged = dict(DEFAULT_THRESHOLDS)
        if model:
            merged.update({k: float(v) for k, v in model.get("thresholds", {}).items()})
        if self.embedding is not None:
            merged.update(self.embedding.thresholds)
        if thresholds:
            merged.update(thresholds)
        self.thresholds = merged

    # -- public API -------------------------------------------------------------------

    def classify(self, text: str) -> Classification:
        """The outcome of one reply (its new text only, quotes and signature removed)."""
        return self.analyse(text).verdict

    def features(self, text: str) -> set[str]:
        """The model's features for a raw reply text (used by the training script)."""
        return features(normalize(text), self.negators, self.contrast)

    def analyse(self, text: str) -> Analysis:
        """Classify and keep the evidence: cues that fired and the model's probabilities."""
        norm = normalize(text)
        language = self._guess_language(norm)
        if not any(ch.isalnum() or _is_emoji(ch) or ch == "?" for ch in norm):
            verdict = Classification(Outcome.UNCLEAR, 1.0, "rule:empty")
            return Analysis(norm, language, verdict, settled=verdict)

        optout = self._optout_cue(norm)
        if optout is not None:
            outcome_cues = [c for c in self._phrase_cues(norm) if not c.weak
                            and not (c.start < optout.end and optout.start < c.end)]
            if optout.weak and outcome_cues:
                # a bare "stop" or "spam" next to a clear outcome ("Stop, we hired her!"):
                # an opt-out cannot be undone by the person, so a person decides
                rule = f"conflict {optout.rule} vs {outcome_cues[-1].rule}"
                verdict = Classification(Outcome.UNCLEAR, 0.5, rule, optout.lang)
            else:
                verdict = Classification(Outcome.OPTOUT, _CONF_OPTOUT, optout.rule, optout.lang)
            return Analysis(norm, optout.lang, verdict, settled=verdict, cues=[optout])

        short = self._short_answer(norm)
        if short is not None:
            label, rule, lang = short
            verdict = Classification(label, _CONF_SHORT, rule, lang or language)
            return Analysis(norm, lang or language, verdict, settled=verdict)

        probs = (
            self.model.predict(features(norm, self.negators, self.contrast)) if self.model else None
        )
        if probs is not None and self.embedding is not None and self.embed is not None:
            other = self.embedding.predict(self.embed(text))
            share = self.embedding.blend
            probs = {k: share * probs[k] + (1 - share) * other[k] for k in probs}
        cues = self._phrase_cues(norm) or self._clause_cues(norm)
        decided = self._resolve_cues(norm, cues)
        if decided is not None and decided[1].lang in self._stopwords:
            language = decided[1].lang
        analysis = Analysis(
            norm,
            language,
            Classification(Outcome.UNCLEAR, 0.0, ""),
            cues=cues,
            decided=decided,
            probabilities=probs,
        )
        analysis.verdict = self.decide(analysis)
        return analysis

    # -- rules ------------------------------------------------------------------------

    def _guess_language(self, norm: str) -> str | None:
        words = [t for t in tokenize(norm) if t[0].isalnum()]
        best, best_hits = None, 0
        for lang, stop in self._stopwords.items():
            hits = sum(1 for w in words if w in stop)
            if hits > best_hits:
                best, best_hits = lang, hits
        return best

    def _optout_cue(self, norm: str) -> Cue | None:
        trap_spans = [m.span() for rx in self._traps for m in rx.finditer(norm)]
        for pat in self._optout:
            for m in pat.regex.finditer(norm):
                start, end = m.span()
                # A trap ("stop by", "unsubscribed from their newsletter") overlapping the
                # opt-out words cancels that match only; another phrase can still fire.
                if any(s < end and start < e for s, e in trap_spans):
                    continue
                return Cue(Outcome.OPTOUT, pat.lang, pat.name, start, end, pat.weak)
        return None

    def _short_answer(self, norm: str) -> tuple[Outcome, str, str | None] | None:
        emojis = [normalize(ch) for ch in norm if _is_emoji(ch)]
        key = _short_key(norm)
        word_label: tuple[Outcome, str, str | None] | None = None
        if key:
            hit = self._short.get(key)
            stripped = ""
            if hit is None:
                stripped = _WS.sub(" ", self._fillers.sub(" ", key)).strip(" '")
                hit = self._short.get(stripped)
                if hit is None and not stripped:
                    # Nothing but thanks/greetings ("Thanks!", "Merci"): no outcome in it.
                    word_label = (Outcome.UNCLEAR, "rule:short:filler", None)
            if hit is not None:
                label, lang = hit
                word_label = (label, f"rule:short:{lang}:{stripped or key}", lang)
            if word_label is None:
                return None
        if not emojis:
            return word_label
        labels = {self._emoji.get(e, Outcome.UNCLEAR) for e in emojis}
        emoji_label = labels.pop() if len(labels) == 1 else Outcome.UNCLEAR
        if word_label is None:
            return emoji_label, f"rule:emoji:{emoji_label.value}", None
        if word_label[0] == emoji_label or emoji_label == Outcome.UNCLEAR:
            # "yes 🙏": the words carry the answer; a neutral emoji does not change it.
            return word_label
        if word_label[0] == Outcome.UNCLEAR:
            # "Thanks! 👍": the emoji is the answer.
            return emoji_label, f"rule:emoji:{emoji_label.value}", None
        return Outcome.UNCLEAR, "rule:short:conflict", word_label[2]

    def _phrase_cues(self, norm: str) -> list[Cue]:
        found = [
            Cue(pat.label, pat.lang, pat.name, m.start(), m.end(), pat.weak)
            for pat in self._phrases
            for m in pat.regex.finditer(norm)
            if m.end() > m.start()
        ]
        # Longest match wins where cues overlap: "didn't work out" (negative) swallows
        # "work out" (positive), "not bad at all" (positive) anything inside it.
        found.sort(key=lambda c: (-(c.end - c.start), c.start))
        kept: list[Cue] = []
        for cue in found:
            if all(cue.end <= k.start or cue.start >= k.end for k in kept):
                kept.append(cue)
        kept.sort(key=lambda c: c.start)
        return kept

    def _clause_cues(self, norm: str) -> list[Cue]:
        """Short answers opening a clause ("Yep, all good", "Really good. Not what I ...")."""
        cues = []
        for m in _CLAUSE.finditer(norm):
            key = _short_key(m.group())
            hit = self._short.get(key)
            if hit is None:
                stripped = _WS.sub(" ", self._fillers.sub(" ", key)).strip(" '")
                hit = self._short.get(stripped) if stripped else None
            if hit is not None and hit[0] in PHRASE_LABELS:
                name = f"clause:{key}"
                cues.append(Cue(hit[0], hit[1], name, m.start(), m.end(), weak=True))
        return cues

    def _resolve_cues(self, norm: str, cues: Sequence[Cue]) -> tuple[Outcome, Cue, float] | None:
        if not cues:
            return None
        labels = {c.label for c in cues}
        if len(labels) == 1:
            # A strong cue speaks for the reply; it is weak only if every cue is weak.
            strong = [c for c in cues if not c.weak]
            return cues[-1].label, (strong or cues)[-1], _CONF_PHRASE
        # Mixed reply: the last clause after a contrast word that carries a cue decides
        # ("great guy, but no budget" -> negative; "slow start, but we signed" -> positive).
        if self._contrast_re is not None:
            cuts = [m.end() for m in self._contrast_re.finditer(norm)]
            for cut in reversed(cuts):
                after = [c for c in cues if c.start >= cut]
                if after and len({c.label for c in after}) == 1:
                    return after[-1].label, after[-1], _CONF_PHRASE_RESOLVED
                if after:
                    break
        # Otherwise the referral's outcome beats praise for the person, and a result beats
        # a future meeting: negative > positive > pending.
        for label in PHRASE_LABELS:
            for cue in cues:
                if cue.label == label:
                    return label, cue, _CONF_PHRASE_RESOLVED
        return None  # pragma: no cover - labels are always among PHRASE_LABELS

    # -- combination ------------------------------------------------------------------

    def decide(
        self, analysis: Analysis, thresholds: Mapping[str, float] | None = None
    ) -> Classification:
        """Combine an analysis's phrase cue and model probabilities into a verdict.

        Public so the training script can sweep ``thresholds`` without re-analysing.
        """
        if analysis.settled is not None:
            return analysis.settled
        decided, probs, language = analysis.decided, analysis.probabilities, analysis.language
        t = self.thresholds if thresholds is None else {**self.thresholds, **thresholds}
        if probs is None:
            if decided is None or decided[1].weak:
                return Classification(Outcome.UNCLEAR, 0.0, "no-cue (no model loaded)", language)
            label, cue, conf = decided
            return Classification(label, conf, cue.rule, language)

        top = max(probs, key=lambda k: probs[k])
        p_top = probs[top]
        name = self.model.name if self.model else "lr"
        if self.embedding is not None:
            name += "+" + self.embedding.name
        model_rule = f"model:{name} {top.value} p={p_top:.2f}"
        # The model's own opt-out verdict is taken only where no phrase cue speaks (below),
        # so "never answered my e-mails" (a negative cue) cannot become an opt-out.
        if decided is not None and decided[1].weak and decided[0] != top:
            if _OPPOSITE.get(decided[0]) == top:
                # Praise against a model that reads a refusal: mixed evidence, a person decides.
                rule = f"conflict {decided[1].rule} vs {model_rule}"
                return Classification(Outcome.UNCLEAR, p_top, rule, language)
            decided = None  # a weak cue the model does not share: the model alone decides
        if decided is not None:
            label, cue, conf = decided
            if top == label:
                return Classification(
                    label, max(conf, p_top), f"{cue.rule} +{model_rule}", language
                )
            opposite = _OPPOSITE.get(label)
            # never decide against the model's own leaning to the other polarity: "Yeah,
            # super helpful. Sent us a price list and vanished." has a praise cue and a model
            # that reads a refusal; a person decides
            vetoed = opposite is not None and (probs[opposite] >= t["rule_veto"]
                                               or top == opposite)
            if probs[label] >= t["rule_floor"] and not vetoed:
                return Classification(
                    label, conf * 0.9, f"{cue.rule} (model {top.value} p={p_top:.2f})", language
                )
            return Classification(
                Outcome.UNCLEAR, p_top, f"conflict {cue.rule} vs {model_rule}", language
            )

        if top is Outcome.OPTOUT:
            # An opt-out must be earned by explicit words (a phrase rule above). The model
            # alone has read "opt-out" into "we're starting a project": a person decides.
            return Classification(Outcome.UNCLEAR, p_top,
                                  f"model-only opt-out needs explicit words {model_rule}",
                                  language)
        if p_top >= t[top.value]:
            return Classification(top, p_top, model_rule, language)
        return Classification(Outcome.UNCLEAR, p_top, f"below-threshold {model_rule}", language)
