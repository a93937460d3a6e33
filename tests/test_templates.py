"""The message templates: documented variables, readable plain text, escaping, operator
overrides, and `introloop preview`.

How they look in a browser: tests/test_rendering.py.
"""

from __future__ import annotations

import json
import re
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from click.testing import CliRunner
from jinja2 import Environment, meta, nodes

from service.adapters.templates import Renderer, TemplateError
from service.cli import main
from service.paths import templates_dir
from service.preview import SAMPLES, Sample, render_sample, sample_context

EMAILS = templates_dir() / "emails"
# Templates other engineers own: checked by their own tests (monthly and network summaries,
# intro confirmation); here only ours.
OURS = sorted(SAMPLES)
PARTY_ASKING = ["feedback_request", "reminder", "recheck", "combined_request"]


def test_every_template_of_ours_has_a_sample_and_all_three_parts() -> None:
    names = Renderer().names()
    assert set(OURS) <= set(names)
    assert not [n for n in names if n.startswith("_")]  # included pieces are not messages
    for name in OURS:
        for part in ("subject", "txt", "html"):
            assert (EMAILS / f"{name}.{part}.j2").is_file(), f"{name}.{part}.j2"


def _used_variables(path: Path, seen: set[Path] | None = None) -> set[str]:
    """Top-level variables a template (and what it includes or extends) reads."""
    seen = seen or set()
    if path in seen:
        return set()
    seen.add(path)
    env = Environment()
    source = path.read_text()
    ast = env.parse(source)
    used = set(meta.find_undeclared_variables(ast))
    # names the template defines itself ({% set %}, {% from ... import %}) are not inputs;
    # Jinja reports a `set` inside a block as undeclared when it extends an earlier `set`
    for node in ast.find_all(nodes.Assign):
        targets = [node.target, *node.target.find_all(nodes.Name)]
        used -= {n.name for n in targets if isinstance(n, nodes.Name)}
    for node in ast.find_all(nodes.FromImport):
        used -= {n if isinstance(n, str) else n[1] or n[0] for n in node.names}
    for ref in meta.find_referenced_templates(ast):
        if ref and ref != "_layout.html.j2":
            used |= _used_variables(EMAILS / ref, seen)
    return used - {"loop", "range", "preheader"}


def _documented(name: str) -> str:
    """The comment at the top of NAME.txt.j2, plus the one it refers to ("see ...")."""
    source = (EMAILS / f"{name}.txt.j2").read_text()
    head = source.split("-#}", 1)[0]
    for ref in re.findall(r"(\w+)\.txt\.j2", head):
        if ref != name:
            head += _documented(ref)
    # pieces it includes ("_answers.txt.j2") document their own parameters
    for part in meta.find_referenced_templates(Environment().parse(source)):
        if part and part.startswith("_"):
            head += (EMAILS / part).read_text().split("-#}", 1)[0]
    return head


@pytest.mark.parametrize("name", OURS)
def test_every_variable_is_documented_at_the_top(name: str) -> None:
    doc = _documented(name)
    for part in ("subject", "txt", "html"):
        path = EMAILS / f"{name}.{part}.j2"
        assert path.read_text().startswith("{#-"), f"{path.name} has no comment at the top"
        for var in sorted(_used_variables(path)):
            assert re.search(rf"\b{var}\b", doc), f"{path.name} uses {var!r}, not documented"


@pytest.mark.parametrize("name", OURS)
def test_plain_text_is_readable(name: str) -> None:
    subject, text, _, eml = render_sample(Renderer(), name)
    assert "mailto:" not in text and "%40" not in text and "%20" not in text
    assert "{{" not in text and "{%" not in text and "None" not in text
    assert "\n\n\n" not in text
    msg = message_from_bytes(eml, policy=policy.default)
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert str(msg["Subject"]) == subject and "\n" not in subject
    if name in PARTY_ASKING:
        assert "👍" in text and "👎" in text
        assert "shared with" in text  # they know the referrer will read their answer
        for address in re.findall(r"referrals\+\S+@founders\.example", text):
            assert len(address) < 50  # short enough to read and copy
    if name not in ("unclear_review", "operator_alert", "network_summary"):  # to the operator
        assert "José" in text or "Alice" in text  # greeted by name


def test_one_click_links_stay_links_in_html() -> None:
    _, _, html, _ = render_sample(Renderer(), "feedback_request")
    hrefs = re.findall(r'href="(mailto:[^"]+)"', html)
    assert len(hrefs) == 4
    assert all(h.startswith("mailto:referrals+12") and "subject=" in h for h in hrefs)
    assert 'style="' in html and "<style" not in html.split("<body", 1)[1]  # CSS inlined


def test_lessons_note_has_the_debrief() -> None:
    _, text, _, _ = render_sample(Renderer(), "lessons")
    for phrase in ("Not every referral lands", "Timeline", "Assumptions", "What each side knew",
                   "Signals missed", "how could I introduce you better", "Lovely conversation",
                   "nobody is to blame"):
        assert phrase in text


def test_a_party_known_only_by_address_is_greeted_gracefully() -> None:
    from service.core.model import Person

    sample = Sample(party=Person("jsmith42@corp.example"),
                    referrer=Person("alice@martin-partners.example"))
    _, text, _, _ = render_sample(Renderer(), "feedback_request", sample)
    assert text.startswith("Hello,\n")
    assert "introduced you" in text and "alice@martin-partners.example" in text
    assert "jsmith42," not in text and "Hi ," not in text


def test_reply_text_with_html_is_escaped() -> None:
    hostile = '<script>alert(1)</script> <img src=x onerror="alert(2)">'
    for name in ("appreciation", "lessons", "unclear_review"):
        ctx = sample_context(name)
        ctx.update(quote=hostile, reply_text=hostile)
        rendered = Renderer().render(name, ctx)
        assert "<script>" not in rendered.html and "<img" not in rendered.html
        assert "&lt;script&gt;" in rendered.html
        assert hostile in rendered.text


def test_operator_overrides_one_file_and_keeps_the_rest(tmp_path: Path) -> None:
    (tmp_path / "feedback_request.subject.j2").write_text("Quick question, {{ party.short }}")
    r = Renderer(tmp_path)
    ctx = sample_context("feedback_request")
    rendered = r.render("feedback_request", ctx)
    assert rendered.subject == "Quick question, José"
    assert "How did it go?" in rendered.text  # the shipped body


def test_a_missing_variable_is_an_error_naming_the_template(tmp_path: Path) -> None:
    (tmp_path / "reminder.txt.j2").write_text("Hi {{ nobody_knows_me }}")
    with pytest.raises(TemplateError, match=r"reminder.*nobody_knows_me"):
        Renderer(tmp_path).render("reminder", sample_context("reminder"))


def test_templates_are_sandboxed(tmp_path: Path) -> None:
    (tmp_path / "reminder.txt.j2").write_text("{{ party.__class__.__mro__ }}")
    with pytest.raises(TemplateError):
        Renderer(tmp_path).render("reminder", sample_context("reminder"))


# ------------------------------------------------------------------ introloop preview


def test_preview_writes_html_text_and_eml(tmp_path: Path) -> None:
    out = tmp_path / "p"
    result = CliRunner().invoke(main, ["--env-file", "/nonexistent", "preview",
                                       "feedback_request", "--out", str(out),
                                       "--no-screenshots", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    files = data["written"][0]["files"]
    assert sorted(Path(f).name for f in files) == ["feedback_request.eml",
                                                   "feedback_request.html",
                                                   "feedback_request.txt"]
    eml = message_from_bytes((out / "feedback_request.eml").read_bytes(), policy=policy.default)
    assert eml["To"].addresses[0].display_name == "José Müller-Łukasiewicz"
    assert b"=?utf-8?" in (out / "feedback_request.eml").read_bytes()


def test_preview_says_what_to_install_without_chromium(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("INTROLOOP_CHROMIUM", str(tmp_path / "no-such-chromium"))
    result = CliRunner().invoke(main, ["--env-file", "/nonexistent", "preview", "lessons",
                                       "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "apt-get install chromium" in result.output
    assert not list(tmp_path.glob("*.png"))


def test_preview_rejects_an_unknown_template(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--env-file", "/nonexistent", "preview", "nope",
                                       "--out", str(tmp_path)])
    assert result.exit_code == 2 and "feedback_request" in result.output
    assert "Traceback" not in result.output


def test_preview_uses_the_operators_network_name(tmp_path: Path) -> None:
    env = {"INTROLOOP_ADDRESS": "intros@guild.example", "INTROLOOP_NETWORK_NAME": "The Guild"}
    result = CliRunner().invoke(main, ["--env-file", "/nonexistent", "preview", "reminder",
                                       "--out", str(tmp_path), "--no-screenshots"], env=env)
    assert result.exit_code == 0, result.output
    text = (tmp_path / "reminder.txt").read_text()
    assert "The Guild" in text and "intros+12" in text


def test_preview_all_skips_messages_without_sample_data(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--env-file", "/nonexistent", "preview", "--all",
                                       "--out", str(tmp_path), "--no-screenshots", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert {w["template"] for w in data["written"]} == set(SAMPLES)
    assert data["errors"] == []
    assert len(list(tmp_path.glob("*.eml"))) == len(SAMPLES)
