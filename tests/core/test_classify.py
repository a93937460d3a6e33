"""Reply-outcome classifier: hard cases written for these tests, plus the held-out dev set.

The table cases are ours (not from ../shared). The dev-set test runs only when
../shared exists and asserts the two costly errors never happen there: a positive read as
negative (or back) and an opt-out not honoured.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path

import pytest

from service.classifier_data import default_config_dir, load_classifier
from service.core.classify import Classifier, feature_spec_hash, normalize
from service.core.model import Outcome

POS, NEG, PEND, OPT, UNC = (
    Outcome.POSITIVE,
    Outcome.NEGATIVE,
    Outcome.PENDING,
    Outcome.OPTOUT,
    Outcome.UNCLEAR,
)
SHARED = Path(__file__).resolve().parents[3] / "shared"
CLASSIFIER_DIR = default_config_dir() / "classifier"


@pytest.fixture(scope="module")
def clf() -> Classifier:
    return load_classifier()


@pytest.fixture(scope="module")
def rules_only() -> Classifier:
    with (CLASSIFIER_DIR / "vocabulary.toml").open("rb") as fh:
        return Classifier(tomllib.load(fh))


# Exact verdicts: the rules decide these, so they must come out exactly so.
EXACT = [
    # opt-out, in every language, and opt-out wins over an outcome
    ("Please take me off your mailing list.", OPT),
    ("It was a great intro, but stop emailing me about it.", OPT),
    ("Didn't work out. Also please unsubscribe me.", OPT),
    ("STOP!", OPT),
    ("Quiero darme de baja, gracias.", OPT),
    ("Gracias, pero no me escriban más.", OPT),
    ("Bitte tragen Sie mich aus, danke.", OPT),
    ("Ich möchte keine E-Mails mehr bekommen.", OPT),
    ("Merci, mais désabonnez-moi.", OPT),
    ("Arrêtez de m'écrire svp.", OPT),
    ("Graag uitschrijven.", OPT),
    ("Stuur me geen berichten meer aub.", OPT),
    # opt-out traps: "stop" and "remove" that are not about our emails
    ("Stop by the studio next time you're in town, the intro went really well!", POS),
    ("I've stopped chasing her, she never replied.", NEG),
    ("They helped us remove the bottleneck, it went really well.", POS),
    # one-word answers read against "Did it work out?"
    ("Yes!!", POS),
    ("yep, thanks", POS),
    ("Nope.", NEG),
    ("nah, sadly", NEG),
    ("Not yet.", PEND),
    ("not yet 🙂", PEND),
    ("ok", UNC),
    ("Thanks!", UNC),
    ("Merci !", UNC),
    ("No thanks.", UNC),
    ("?", UNC),
    ("", UNC),
    ("Sí", POS),
    ("Nein, leider nicht.", NEG),
    ("Pas encore", PEND),
    ("Nee", NEG),
    # emoji
    ("👍🏽", POS),
    ("🎉🎉", POS),
    ("👎", NEG),
    ("🤔", UNC),
    ("yes 👎", UNC),
    ("Thanks 👍", POS),
]


@pytest.mark.parametrize(("text", "expected"), EXACT)
def test_exact(clf: Classifier, text: str, expected: Outcome) -> None:
    verdict = clf.classify(text)
    assert verdict.outcome == expected, verdict
    assert verdict.rule


# Negation, mixed and polite replies: the right answer, or unclear (a person decides),
# but never the opposite polarity and never an opt-out.
SAFE = [
    ("Not bad at all, we've started a small project together.", POS),
    ("No complaints: they delivered on time and we're ordering again.", POS),
    ("Couldn't have asked for a better partner, thank you.", POS),
    ("It didn't go well at all.", NEG),
    ("The conversation wasn't very useful for us.", NEG),
    ("Wonderful person, but they have no budget for this.", NEG),
    ("Lovely call, however we've chosen a different supplier.", NEG),
    ("Thank you so much for thinking of us, but we'll pass for now.", NEG),
    ("Thanks for the intro! Sadly nothing came of it.", NEG),
    ("I wrote to him twice and never heard back.", NEG),
    ("I wrote to him on Monday, no reply yet.", PEND),
    ("Our first call is booked for Thursday 🎉", PEND),
    ("Slow start, but we've now signed the contract.", POS),
    ("Muy buena reunión, ya estamos trabajando juntos.", POS),
    ("Simpática, pero no tienen presupuesto.", NEG),
    ("Todavía no hemos podido hablar.", PEND),
    ("Gar nicht schlecht, wir arbeiten jetzt zusammen.", POS),
    ("Netter Austausch, aber es passt leider nicht.", NEG),
    ("Wir haben uns noch nicht getroffen, Termin folgt.", PEND),
    ("Ça s'est très bien passé, nous collaborons déjà.", POS),
    ("Personne très sympa, mais pas de budget.", NEG),
    ("Pas encore, on se voit mardi.", PEND),
    ("Het ging erg goed, we werken nu samen.", POS),
    ("Aardig gesprek, maar het past niet bij ons.", NEG),
    ("Nog niet gesproken, volgende week.", PEND),
    ("Who gave you this address? What introduction?", UNC),
]


@pytest.mark.parametrize(("text", "expected"), SAFE)
def test_right_or_unclear(clf: Classifier, text: str, expected: Outcome) -> None:
    verdict = clf.classify(text)
    assert verdict.outcome in (expected, UNC), verdict
    assert verdict.outcome != OPT or expected == OPT


# Costly mistakes that must never happen, whatever else the answer is.
NEVER = [
    ("Nice call. Nothing further planned.", {POS, OPT}),
    ("Great chat with Sven! They went with a bigger agency though.", {POS, OPT}),
    ("Not disappointed in the slightest, they're now our supplier.", {NEG, OPT}),
    ("Never been so glad to be introduced to someone.", {NEG, OPT}),
    ("I don't regret a minute of it, great partnership.", {NEG, OPT}),
    ("Stop by for coffee when you're around!", {OPT}),
    ("We unsubscribed from their newsletter ages ago, but the call went well.", {OPT, NEG}),
    ("Please send me her number again.", {OPT}),
    ("Could you stop by our booth at the fair? We'd love to say thanks, it worked out.", {OPT}),
]


@pytest.mark.parametrize(("text", "forbidden"), NEVER)
def test_never(clf: Classifier, text: str, forbidden: set[Outcome]) -> None:
    verdict = clf.classify(text)
    assert verdict.outcome not in forbidden, verdict


def test_weak_praise_needs_the_model(rules_only: Classifier) -> None:
    """Praise for the meeting alone is no outcome without a model that agrees."""
    assert rules_only.classify("Great call with them.").outcome == UNC


def test_thresholds_can_be_overridden() -> None:
    with (CLASSIFIER_DIR / "vocabulary.toml").open("rb") as fh:
        vocabulary = tomllib.load(fh)
    model = json.loads((CLASSIFIER_DIR / "model.json").read_text(encoding="utf-8"))
    strict = Classifier(vocabulary, model, thresholds={"positive": 1.01, "negative": 1.01})
    # With no cue, an unreachable threshold sends the model's answer to a person.
    assert strict.classify("We grabbed lunch and compared notes on hiring.").outcome in (
        UNC,
        PEND,
    )


def test_rule_names_what_decided(clf: Classifier) -> None:
    assert clf.classify("Please unsubscribe me").rule == "rule:optout:en:unsubscribe"
    assert clf.classify("Abmelden bitte").rule.startswith("rule:optout:de:")
    assert clf.classify("yes").rule == "rule:short:en:yes"
    assert clf.classify("🤔").rule == "rule:emoji:unclear"


def test_language_is_reported(clf: Classifier) -> None:
    assert clf.classify("Désabonnez-moi").language == "fr"
    assert clf.classify("Het is niet doorgegaan, jammer.").language == "nl"
    assert clf.classify("Todavía no, tenemos una llamada el jueves.").language == "es"


def test_confidence_is_a_probability(clf: Classifier) -> None:
    for text in ("yes", "It went really well, we signed.", "hmm, whatever", "Abmelden"):
        assert 0.0 <= clf.classify(text).confidence <= 1.0


def test_normalize_folds_case_accents_quotes() -> None:
    assert normalize("  Ça  N’A  PAS marché ") == "ca n'a pas marche"
    assert normalize("Grüße 👍🏻") == "grusse 👍"


def test_rules_only_still_decides_clear_cases(rules_only: Classifier) -> None:
    """Without model.json the rules answer what they can and the rest is unclear."""
    assert rules_only.model is None
    assert rules_only.classify("Please unsubscribe me").outcome == OPT
    assert rules_only.classify("Great guy, but no budget.").outcome == NEG
    assert rules_only.classify("Pas encore").outcome == PEND
    assert rules_only.classify("We had lunch and talked about sailing.").outcome == UNC


def test_shipped_model_matches_its_data(clf: Classifier) -> None:
    """model.json was trained on the train.jsonl and features in the repo (else retrain)."""
    model = json.loads((CLASSIFIER_DIR / "model.json").read_text(encoding="utf-8"))
    train = (CLASSIFIER_DIR / "train.jsonl").read_bytes()
    assert model["train_sha256"] == hashlib.sha256(train).hexdigest()
    assert model["feature_spec"] == feature_spec_hash(clf.negators, clf.contrast)
    assert not clf.model_stale


def test_load_classifier_is_cached() -> None:
    assert load_classifier() is load_classifier()


# -- held-out data in ../shared (skipped when absent) --------------------------------


def _devset() -> list[dict[str, str]]:
    path = SHARED / "devset" / "replies.jsonl"
    if not path.is_file():
        pytest.skip("../shared/devset not available")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


@pytest.mark.corpus
def test_devset_no_costly_errors(clf: Classifier) -> None:
    rows = _devset()
    pred = [(r["label"], clf.classify(r["text"]).outcome.value, r["text"]) for r in rows]
    pos_neg = [t for g, p, t in pred if {g, p} == {"positive", "negative"}]
    missed_optouts = [t for g, p, t in pred if g == "optout" and p != "optout"]
    assert pos_neg == []
    assert missed_optouts == []


@pytest.mark.corpus
def test_training_set_holds_no_devset_reply() -> None:
    """Keep the held-out set held out: no dev-set text (normalised) is in train.jsonl."""
    dev = {normalize(r["text"]) for r in _devset()}
    lines = (CLASSIFIER_DIR / "train.jsonl").read_text(encoding="utf-8").splitlines()
    train = {normalize(json.loads(line)["text"]) for line in lines if line}
    assert not dev & train
