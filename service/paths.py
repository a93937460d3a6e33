"""Where the shipped data (templates, config, samples) lives, from a checkout or a wheel."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _find(name: str) -> Path:
    # A checkout (editable install, Docker image) keeps these at the repository's top level,
    # where operators edit them; a wheel carries copies under service/_data/.
    top = _PACKAGE.parent / name
    if top.is_dir():
        return top
    return _PACKAGE / "_data" / name


def config_dir() -> Path:
    """The top-level `config/` directory (defaults, classifier vocabulary)."""
    return _find("config")


def templates_dir() -> Path:
    """The shipped `templates/` directory (the emails live in its `emails/` folder)."""
    return _find("templates")
