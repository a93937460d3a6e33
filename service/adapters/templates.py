"""Email templates: `templates/emails/<name>.subject.j2`, `.txt.j2` and `.html.j2`.

Two Jinja environments: HTML with autoescape, text without; both StrictUndefined so a missing
variable fails in tests rather than producing "Hello ," in someone's inbox. An operator's
directory (INTROLOOP_TEMPLATES_DIR) is searched before the shipped templates, file by file, so
overriding one message does not mean copying them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import css_inline
from jinja2 import ChoiceLoader, FileSystemLoader, StrictUndefined, TemplateNotFound
from jinja2.sandbox import SandboxedEnvironment

from service.paths import templates_dir


@dataclass(frozen=True, slots=True)
class Rendered:
    """A rendered message: one-line subject, plain text, and HTML with CSS inlined."""

    subject: str
    text: str
    html: str


class TemplateError(Exception):
    """A template is missing or fails to render; the message names the file."""


class Renderer:
    """Renders the email templates. Sandboxed, since operators may edit templates."""

    def __init__(self, override_dir: Path | None = None):
        dirs = [templates_dir() / "emails"]
        if override_dir is not None:
            dirs.insert(0, Path(override_dir))
        loader = ChoiceLoader([FileSystemLoader(str(d)) for d in dirs])
        self._text = SandboxedEnvironment(
            loader=loader, undefined=StrictUndefined, autoescape=False,
            keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True,
        )
        self._html = SandboxedEnvironment(
            loader=loader, undefined=StrictUndefined, autoescape=True,
            trim_blocks=True, lstrip_blocks=True,
        )
        # remote stylesheets would make rendering depend on the network; never load them
        self._inliner = css_inline.CSSInliner(load_remote_stylesheets=False)
        self.dirs = dirs

    def names(self) -> list[str]:
        """Every message name that has a text template."""
        found: set[str] = set()
        for d in self.dirs:
            if d.is_dir():
                # names starting with "_" are pieces other templates include
                found |= {p.name.removesuffix(".txt.j2") for p in d.glob("*.txt.j2")
                          if not p.name.startswith("_")}
        return sorted(found)

    def render(self, name: str, context: dict[str, Any]) -> Rendered:
        """Render message `name` with `context`; raise TemplateError naming the file."""
        try:
            subject = self._text.get_template(f"{name}.subject.j2").render(context)
            text = self._text.get_template(f"{name}.txt.j2").render(context)
            html = self._html.get_template(f"{name}.html.j2").render(context)
        except TemplateNotFound as exc:
            raise TemplateError(f"template {exc.name} is missing") from None
        except Exception as exc:
            raise TemplateError(f"template {name}: {type(exc).__name__}: {exc}") from None
        # a subject is one line, whatever the template or a hostile name put into it
        subject = " ".join(subject.split())
        return Rendered(subject=subject, text=_tidy_text(text), html=self._inliner.inline(html))


def _tidy_text(text: str) -> str:
    lines = [line.rstrip() for line in text.strip("\n").splitlines()]
    out: list[str] = []
    for line in lines:
        if line == "" and out and out[-1] == "":
            continue  # templates with conditionals leave double blank lines
        out.append(line)
    return "\n".join(out) + "\n"
