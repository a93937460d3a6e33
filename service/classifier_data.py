"""Load the reply classifier's data files from ``config/classifier/`` (the I/O edge of classify).

``vocabulary.toml`` holds the phrase lists; ``model.json`` the trained weights and
thresholds (rebuilt by ``bench/train_classifier.py``). A missing model file is not an
error: the classifier then runs on its rules alone, with lower coverage (more replies go
to a person) but the same precision.
"""

from __future__ import annotations

import functools
import json
import logging
import tomllib
from pathlib import Path

import service
from service.core.classify import Classifier

log = logging.getLogger(__name__)

VOCABULARY_FILE = "vocabulary.toml"
MODEL_FILE = "model.json"


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
    classifier = Classifier(vocabulary, model)
    if classifier.model_stale:
        log.warning(
            "classifier model %s was trained with other negators/contrast words or "
            "features; rerun bench/train_classifier.py",
            model_path,
        )
    return classifier
