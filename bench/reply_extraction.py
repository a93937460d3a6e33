"""Compare reply-text extractors on the shared corpus files that come with expected output.

Run from the repository root:

    .venv/bin/python bench/reply_extraction.py            # the table
    .venv/bin/python bench/reply_extraction.py --show ours  # plus every miss of one extractor

For every paired set it prints, per extractor, the share of samples whose output matches the
expected text exactly (after stripping leading/trailing whitespace, as the upstream tests
compare) and after whitespace normalisation (every run of whitespace becomes one space).
Sets, from `../shared/corpus/` (see its MANIFEST.md):

* trimmer      discourse/email_reply_trimmer test/emails -> test/trimmed (plain-text bodies)
* talon-std    talon standard_replies/*.eml -> expected reply text (full MIME messages)
* talon-html   talon html_replies + 2 HTML fixtures -> expected text (HTML bodies)
* discourse    discourse android_gmail / ios_default .eml -> expected reply
* talon-sig    talon signature bodies -> body minus the expected signature (derived pairs;
               the upstream expectation is the signature, so this set measures signature
               removal only)

Libraries take text; for .eml samples they get the text our `text_body` picks, for HTML samples
the text our `html_to_text` gives (quotequail and talon get the HTML itself, which they handle).
talon is optional: it is measured only when importable (it is not a dependency: last release
2017, ~300 MB with scikit-learn/scipy).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
CORPUS = SHARED / "corpus"

if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from service.core.body import decode_bytes, html_to_text, parse_message, text_body  # noqa: E402
from service.core.replytext import extract_reply, strip_reply_text  # noqa: E402


@dataclass(frozen=True)
class Case:
    """One input with its expected reply text."""

    set_name: str
    name: str
    kind: str  # "text" | "html" | "eml"
    data: bytes
    expected: str


def _read_text(path: Path) -> str:
    return decode_bytes(path.read_bytes(), "utf-8").replace("\r\n", "\n")


def _trimmer_cases() -> Iterator[Case]:
    base = CORPUS / "discourse-email_reply_trimmer" / "test"
    for path in sorted((base / "emails").glob("*.txt")):
        expected = base / "trimmed" / path.name
        if expected.is_file():
            yield Case("trimmer", path.stem, "text", path.read_bytes(), _read_text(expected))


def _talon_std_cases() -> Iterator[Case]:
    base = CORPUS / "talon" / "tests" / "fixtures" / "standard_replies"
    derived = CORPUS / "talon" / "expected" / "standard_replies"
    for path in sorted(base.glob("*.eml")):
        for candidate in (base / f"{path.stem}_reply_text", derived / f"{path.stem}_reply_text"):
            if candidate.is_file():
                yield Case("talon-std", path.stem, "eml", path.read_bytes(), _read_text(candidate))
                break


def _talon_html_cases() -> Iterator[Case]:
    fixtures = CORPUS / "talon" / "tests" / "fixtures"
    expected = CORPUS / "talon" / "expected"
    for path in sorted((fixtures / "html_replies").glob("*.html")):
        exp = expected / "html_replies" / f"{path.stem}.txt"
        if exp.is_file():
            yield Case("talon-html", path.stem, "html", path.read_bytes(), _read_text(exp))
    for stem in ("OLK_SRC_BODY_SECTION", "reply-separated-by-hr"):
        src, exp = fixtures / f"{stem}.html", expected / f"{stem}.expected.html"
        if src.is_file() and exp.is_file():
            yield Case("talon-html", stem, "html", src.read_bytes(), html_to_text(_read_text(exp)))


def _discourse_cases() -> Iterator[Case]:
    base = CORPUS / "discourse"
    for stem in ("android_gmail", "ios_default"):
        src = base / "spec" / "fixtures" / "emails" / f"{stem}.eml"
        exp = base / "expected" / f"{stem}_reply.txt"
        if src.is_file() and exp.is_file():
            yield Case("discourse", stem, "eml", src.read_bytes(), _read_text(exp))


def _talon_sig_cases() -> Iterator[Case]:
    base = CORPUS / "talon" / "tests" / "fixtures" / "signature" / "emails" / "stripped"
    for body in sorted(base.glob("*_body")):
        stem = body.name[: -len("_body")]
        sig = base / f"{stem}_signature"
        if not sig.is_file():
            continue
        text, signature = _read_text(body), _read_text(sig).strip()
        expected = text.rstrip()
        if signature and expected.endswith(signature):
            expected = expected[: -len(signature)]
        elif signature:
            continue  # no clean derivation possible; leave the sample out
        yield Case("talon-sig", stem, "text", body.read_bytes(), expected.strip())


SETS: dict[str, Callable[[], Iterator[Case]]] = {
    "trimmer": _trimmer_cases,
    "talon-std": _talon_std_cases,
    "talon-html": _talon_html_cases,
    "discourse": _discourse_cases,
    "talon-sig": _talon_sig_cases,
}


# --- extractors ------------------------------------------------------------------------------


def _as_text(case: Case) -> str:
    """The text a text-only library is given for this case."""
    if case.kind == "eml":
        return text_body(parse_message(case.data))[0]
    if case.kind == "html":
        return html_to_text(decode_bytes(case.data, "utf-8"))
    return decode_bytes(case.data, "utf-8")


def _html_of(case: Case) -> str | None:
    """The HTML body of the case for HTML-capable libraries, when the sample is HTML-only."""
    if case.kind == "html":
        return decode_bytes(case.data, "utf-8")
    return None


def run_email_reply_parser(case: Case) -> str:
    from email_reply_parser import EmailReplyParser

    return EmailReplyParser.parse_reply(_as_text(case)) or ""


MPR_LANGUAGES = ["en", "de", "fr", "es", "nl", "it", "pl", "sv", "da"]


def run_mail_parser_reply(case: Case) -> str:
    from mailparser_reply import EmailReplyParser

    return EmailReplyParser(languages=list(MPR_LANGUAGES)).parse_reply(_as_text(case)) or ""


def run_quotequail(case: Case) -> str:
    import quotequail

    html = _html_of(case)
    if html is not None:
        parts = quotequail.quote_html(html, quote_intro_line=True)
        return html_to_text("".join(part for show, part in parts if show))
    return "\n".join(
        part for show, part in quotequail.quote(_as_text(case), quote_intro_line=True) if show
    )


def run_talon(case: Case) -> str:
    from talon import quotations

    html = _html_of(case)
    if html is not None:
        return html_to_text(quotations.extract_from_html(html))
    return quotations.extract_from_plain(_as_text(case))


def run_ours(case: Case) -> str:
    if case.kind == "eml":
        return extract_reply(parse_message(case.data)).text
    if case.kind == "html":
        msg = EmailMessage(policy=policy.default)
        msg.set_content(decode_bytes(case.data, "utf-8"), subtype="html")
        return extract_reply(msg).text
    return strip_reply_text(decode_bytes(case.data, "utf-8"))


def run_quotequail_then_ours(case: Case) -> str:
    """Combination tried: quotequail cuts first (HTML-aware), our rules clean what is left."""
    return strip_reply_text(run_quotequail(case))


def run_ours_then_mail_parser_reply(case: Case) -> str:
    """Combination tried: our extraction, then mail-parser-reply's signature/disclaimer pass."""
    from mailparser_reply import EmailReplyParser

    ours = run_ours(case)
    return EmailReplyParser(languages=list(MPR_LANGUAGES)).parse_reply(ours) or ""


EXTRACTORS: dict[str, Callable[[Case], str]] = {
    "email-reply-parser": run_email_reply_parser,
    "mail-parser-reply": run_mail_parser_reply,
    "quotequail": run_quotequail,
    "talon": run_talon,
    "quotequail>ours": run_quotequail_then_ours,
    "ours>mail-parser-reply": run_ours_then_mail_parser_reply,
    "ours": run_ours,
}
REQUIRES = {
    "email-reply-parser": "email_reply_parser",
    "mail-parser-reply": "mailparser_reply",
    "quotequail": "quotequail",
    "talon": "talon",
    "quotequail>ours": "quotequail",
    "ours>mail-parser-reply": "mailparser_reply",
}


def exact(a: str, b: str) -> bool:
    """Equal after normalising line endings and stripping the ends (the upstream comparison)."""
    return a.replace("\r\n", "\n").strip() == b.replace("\r\n", "\n").strip()


def normalised(a: str, b: str) -> bool:
    """Equal once every run of whitespace is one space."""
    return " ".join(a.split()) == " ".join(b.split())


def _run(fn: Callable[[Case], str], case: Case) -> str:
    # Libraries print and warn; keep the table readable and survive their exceptions.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            return fn(case) or ""
        except Exception as exc:  # a crash counts as a miss, and is shown with --show
            return f"<{type(exc).__name__}: {exc}>"


def main(argv: list[str] | None = None) -> int:
    """Print the comparison table; return 0 (also when the corpus is absent)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--show", metavar="EXTRACTOR", help="print every miss of one extractor")
    args = parser.parse_args(argv)

    if not CORPUS.is_dir():
        print(f"corpus not found at {CORPUS}; nothing to measure (it lives outside the repo).")
        return 0

    available = {
        name: fn
        for name, fn in EXTRACTORS.items()
        if name not in REQUIRES or importlib.util.find_spec(REQUIRES[name]) is not None
    }
    missing = sorted(set(EXTRACTORS) - set(available))

    cases = {name: list(loader()) for name, loader in SETS.items()}
    scores: dict[tuple[str, str], tuple[int, int, int]] = {}
    for set_name, items in cases.items():
        for ext_name, fn in available.items():
            n_exact = n_norm = 0
            for case in items:
                got = _run(fn, case)
                is_exact, is_norm = exact(got, case.expected), normalised(got, case.expected)
                n_exact += is_exact
                n_norm += is_norm
                if args.show == ext_name and not is_norm:
                    print(
                        f"--- MISS {set_name}/{case.name}\n<<< got\n{got.strip()}\n"
                        f">>> expected\n{case.expected.strip()}\n"
                    )
            scores[(set_name, ext_name)] = (n_exact, n_norm, len(items))

    # One row per extractor, one column per set: "exact / normalised" match shares.
    columns = [*cases, "all"]
    sizes = {name: len(items) for name, items in cases.items()}
    sizes["all"] = sum(sizes.values())
    width = max(len(n) for n in available) + 2
    print("Reply-text extraction: share of samples matching exactly / after whitespace")
    print("normalisation (n = samples per set)\n")
    print(f"{'extractor':<{width}}" + "".join(f"{f'{c} ({sizes[c]})':>16}" for c in columns))
    for ext_name in available:
        row = f"{ext_name:<{width}}"
        tot_e = tot_w = 0
        for set_name in cases:
            e, w, total = scores[(set_name, ext_name)]
            tot_e, tot_w = tot_e + e, tot_w + w
            row += f"{_share(e, total) + ' / ' + _share(w, total):>16}"
        row += f"{_share(tot_e, sizes['all']) + ' / ' + _share(tot_w, sizes['all']):>16}"
        print(row)
    print()
    if missing:
        print(f"not measured (not importable here): {', '.join(missing)}")
    print(f"mail-parser-reply languages: {','.join(MPR_LANGUAGES)}")
    return 0


def _share(hits: int, total: int) -> str:
    return f"{100 * hits / total:.0f}%" if total else "-"


if __name__ == "__main__":
    raise SystemExit(main())
