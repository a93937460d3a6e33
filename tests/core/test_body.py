"""Body decoding: lenient parsing, charset fallbacks, MIME walking and HTML to text.

Fixtures are small hand-written messages in tests/data/replies/ (see test_replytext.py for the
reply texts they carry). The corpus checks read ../shared/corpus at run time and are skipped
when it is absent; nothing from it is copied into the repository.
"""

from __future__ import annotations

from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.core.body import (
    decode_bytes,
    html_body,
    html_to_text,
    parse_message,
    text_body,
    unflow,
)
from service.core.replytext import extract_reply

DATA = Path(__file__).resolve().parents[1] / "data" / "replies"
CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus"


def load(name: str) -> EmailMessage:
    return parse_message((DATA / name).read_bytes())


# --- parse_message ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\xff\xfe" * 50,
        b"From: \r\n\r\n",
        b"Content-Type: multipart/mixed; boundary=\r\n\r\n--\r\n--",
        b"Subject: =?utf-8?b?!!!?=\r\nContent-Type: text/plain; charset=\r\n\r\nbody",
        b"no headers at all, just text\n",
        b"Content-Type: multipart/alternative\n\nno boundary parameter",
    ],
)
def test_parse_message_never_raises_and_returns_emailmessage(raw: bytes) -> None:
    msg = parse_message(raw)
    assert isinstance(msg, EmailMessage)
    text, source = text_body(msg)
    assert isinstance(text, str)
    assert source in {"plain", "html", "none"}


def test_parse_message_accepts_bytes_like_and_str() -> None:
    raw = b"Subject: hi\n\nhello\n"
    assert text_body(parse_message(bytearray(raw)))[0].strip() == "hello"
    assert text_body(parse_message(memoryview(raw)))[0].strip() == "hello"
    # A str is not the contract, but a caller's mistake must not crash the reader.
    assert text_body(parse_message("Subject: hi\n\nhello\n"))[0].strip() == "hello"  # type: ignore[arg-type]


def test_parse_message_uses_modern_policy() -> None:
    msg = parse_message(b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\n\nx\n")
    assert msg["Subject"] == "Grüße"  # RFC 2047 decoded: policy.default, not compat32


# --- charsets --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        # label that means nothing; the bytes are latin-1 (not valid UTF-8) -> windows-1252
        ("charset_x_unknown.eml", "Très bien passé, merci Sam !"),
        # MySQL's name for UTF-8
        ("charset_utf8mb4.eml", "Ça s'est bien passé 👍"),
        # code page spelled with a hyphen Python does not accept
        ("charset_cp850.eml", "Größe passt, danke schön."),
        # "us-ascii" with 8-bit bytes: the label lies, the bytes are UTF-8
        ("charset_us_ascii_8bit.eml", "Schön, es hat geklappt."),
        # unknown-8bit with windows-1252 smart quotes and dashes
        ("charset_unknown_8bit.eml", "It’s been great – thanks."),
        # a label no codec knows, base64 body in UTF-8
        ("charset_bogus_label.eml", "Não deu certo, infelizmente."),
        # UTF-8 with one stray latin-1 byte: keep UTF-8, replace only that byte
        ("charset_broken_utf8.eml", "Gut gelaufen, schön! \ufffd\nGrüße"),
        # no charset at all, 8-bit windows-1252 bytes
        ("charset_none_8bit.eml", "Très bien, merci."),
        # base64 body with garbage after it: stop at the first line that is not base64
        ("broken_base64.eml", "It went well, thanks!"),
    ],
)
def test_charset_fallbacks(fixture: str, expected: str) -> None:
    text, source = text_body(load(fixture))
    assert source == "plain"
    assert text.strip() == expected


@pytest.mark.parametrize(
    ("data", "label", "expected"),
    [
        ("héllo".encode(), "utf8", "héllo"),
        ("héllo".encode(), "UTF-8", "héllo"),
        ("héllo".encode(), '"utf-8";', "héllo"),
        ("héllo".encode(), "utf8mb4", "héllo"),
        ("héllo".encode("latin-1"), "iso-8859-1", "héllo"),
        # WHATWG: "iso-8859-1" is really windows-1252 (0x93/0x94 are curly quotes)
        (b"\x93quoted\x94", "iso-8859-1", "\u201cquoted\u201d"),
        ("Привет".encode("koi8-r"), "koi8-r", "Привет"),
        # UTF-8 under a single-byte label: valid UTF-8 wins over the mojibake reading
        ("schön".encode(), "iso-8859-1", "schön"),
        ("Привет".encode(), "koi8-r", "Привет"),
        # a byte windows-1252 leaves unassigned, in text labelled latin-1
        (b"caf\xe9 \x81", "iso-8859-1", "café \x81"),
        ("Привет".encode("cp1251"), "windows 1251", "Привет"),
        ("Größe".encode("cp850"), "cp-850", "Größe"),
        ("こんにちは".encode("iso2022_jp"), "iso-2022-jp", "こんにちは"),
        ("中文".encode("gb18030"), "gb2312", "中文"),
        ("héllo".encode(), "x-unknown", "héllo"),
        ("héllo".encode("cp1252"), "unknown-8bit", "héllo"),
        ("héllo".encode("cp1252"), None, "héllo"),
        # codecs that are not character sets must not be used on mail
        (b"\\x41", "unicode_escape", "\\x41"),
        (b"aGk=", "base64", "aGk="),
        (b"hello", "rot13", "hello"),
        # undecodable by anything sensible: UTF-8 with replacement, never an exception
        (b"\xff\xfe\xfd ok", "utf-8", "ÿþý ok"),
        (b"", "utf-8", ""),
    ],
)
def test_decode_bytes(data: bytes, label: str | None, expected: str) -> None:
    assert decode_bytes(data, label) == expected


def test_decode_bytes_falls_back_to_replacement_when_nothing_fits() -> None:
    # Mostly valid UTF-8 with damage: replacement characters, the valid text intact.
    data = "Ça va très bien ".encode() + b"\xc3" + b" merci"
    assert decode_bytes(data, "us-ascii") == "Ça va très bien \ufffd merci"


# --- MIME walking ----------------------------------------------------------------------------


def test_prefers_plain_over_html() -> None:
    text, source = text_body(load("gmail_multipart.eml"))
    assert source == "plain"
    assert text.startswith("Great intro, thank you.")
    assert "<div" not in text


def test_html_only_is_converted() -> None:
    text, source = text_body(load("html_only_outlook_desktop.eml"))
    assert source == "html"
    assert text.startswith("We haven’t met yet – maybe next month.")
    assert "MsoNormal" not in text  # <style> dropped
    assert "From: Boston Referral Network" in text  # header block kept for the reply rules


def test_html_body_returns_markup() -> None:
    assert "<blockquote" in html_body(load("html_only_apple.eml"))
    assert html_body(load("charset_utf8mb4.eml")) == ""


def test_empty_plain_part_falls_back_to_html() -> None:
    msg = EmailMessage(policy=policy.default)
    msg.set_content("   \n")
    msg.add_alternative("<p>Went <b>well</b></p>", subtype="html")
    assert text_body(msg) == ("Went well", "html")


def test_attachments_and_attached_messages_are_skipped_by_default() -> None:
    msg = load("attachments.eml")
    text, source = text_body(msg)
    assert source == "plain"
    assert text.strip() == "It went well, see the notes attached."
    with_attached, _ = text_body(msg, include_attached_messages=True)
    assert "Dana, meet Priya." in with_attached
    assert "Meeting notes" not in with_attached  # a text *attachment* stays out either way


def test_inline_text_file_is_an_attachment_unless_it_is_all_there_is() -> None:
    msg = EmailMessage(policy=policy.default)
    msg.set_content("Worked out, notes attached.")
    msg.add_attachment("raw notes: great call", filename="notes.txt", disposition="inline")
    assert text_body(msg)[0].strip() == "Worked out, notes attached."
    only = EmailMessage(policy=policy.default)
    only.set_content("Just the file: went well", disposition="inline", filename="answer.txt")
    assert text_body(only)[0].strip() == "Just the file: went well"


def test_text_parts_around_inline_images_are_joined() -> None:
    text, _ = text_body(load("apple_inline_image.eml"))
    expected = "Here is the photo from our first meeting: It went really well."
    assert " ".join(text.split()) == expected


def test_format_flowed_is_unflowed() -> None:
    text, _ = text_body(load("apple_flowed.eml"))
    first = text.split("\n")[0]
    assert first == "Yes, we met twice and it went very well. Thanks again for thinking of me."
    assert "> On 3 Jun 2025, at 09:12, Boston Referral Network <referrals" in text


def test_unflow_keeps_quote_depth_and_signature_separator() -> None:
    flowed = "a b \nc\n>> q1 \n>> q2\n-- \nsig"
    assert unflow(flowed) == "a b c\n> > q1 q2\n-- \nsig"
    assert unflow("wrap \nped", delsp=True) == "wrapped"


def test_no_text_part_is_none() -> None:
    msg = EmailMessage(policy=policy.default)
    msg.set_content(b"\x89PNG...", maintype="image", subtype="png")
    assert text_body(msg) == ("", "none")


def test_signed_message_ignores_signature_blob() -> None:
    raw = (
        b'Content-Type: multipart/signed; boundary="s"; protocol="application/pgp-signature"\n\n'
        b"--s\nContent-Type: text/plain\n\nSigned answer: yes\n"
        b"--s\nContent-Type: application/pgp-signature\n\n-----BEGIN PGP SIGNATURE-----\n--s--\n"
    )
    assert text_body(parse_message(raw))[0].strip() == "Signed answer: yes"


# --- HTML to text ----------------------------------------------------------------------------


def test_html_to_text_structure() -> None:
    html = (
        "<html><head><title>t</title><style>p{color:red}</style></head><body>"
        "<script>alert('x')</script><div>Line one<br>Line two</div>"
        "<p>Para &amp; more&nbsp;text</p><ul><li>first</li><li>second</li></ul>"
        "<hr><div>On Mon, Ann wrote:</div><blockquote>Quoted<br>"
        "<blockquote>deeper</blockquote></blockquote><pre>  keep   spacing</pre>"
        "</body></html>"
    )
    assert html_to_text(html).split("\n") == [
        "Line one",
        "Line two",
        "",
        "Para & more text",
        "",
        "- first",
        "- second",
        "",
        "_" * 32,
        "On Mon, Ann wrote:",
        "> Quoted",
        "> > deeper",
        "",
        "  keep   spacing",
    ]


def test_html_to_text_gmail_empty_lines_and_zero_width() -> None:
    html = "<div>Hi</div><div><br></div><div>Bye\u200b</div>"
    assert html_to_text(html) == "Hi\n\nBye"


@pytest.mark.parametrize("html", ["", "<", "<<>>", "<p", "</div></div>", "<a href='", "&#xffffff;"])
def test_html_to_text_tag_soup_never_raises(html: str) -> None:
    assert isinstance(html_to_text(html), str)


# --- properties ------------------------------------------------------------------------------

_FRAGMENTS = [
    b"Content-Type: multipart/mixed; boundary=b\n",
    b"Content-Type: multipart/alternative; boundary=b\n",
    b"Content-Type: text/plain; charset=x-unknown\n",
    b"Content-Type: text/plain; charset=utf-7\n",
    b"Content-Type: text/html; charset=cp-850\n",
    b"Content-Type: message/rfc822\n",
    b"Content-Transfer-Encoding: base64\n",
    b"Content-Transfer-Encoding: quoted-printable\n",
    b"Content-Transfer-Encoding: x-uuencode\n",
    b"Content-Disposition: attachment; filename*=utf-8''%ff\n",
    b"\n",
    b"--b\n",
    b"--b--\n",
    b"> quoted\n",
    b"On Mon, 1 Jan 2024, A <a@b.c> wrote:\n",
    b"=E2=80=\n",
    b"<blockquote><div class=gmail_quote>",
    b"\xff\xfe\x00",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    msg = parse_message(raw)
    text, source = text_body(msg)
    text_body(msg, include_attached_messages=True)
    reply = extract_reply(msg)
    assert isinstance(text, str) and source in {"plain", "html", "none"}
    assert isinstance(reply.text, str) and isinstance(reply.method, str)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.sampled_from(_FRAGMENTS), st.binary(max_size=40)), max_size=40))
def test_mime_shaped_garbage_never_raises(parts: list[bytes]) -> None:
    msg = parse_message(b"".join(parts))
    text_body(msg)
    text_body(msg, include_attached_messages=True)
    html_body(msg)
    reply = extract_reply(msg, sent_texts=["On Mon, 1 Jan 2024, did it work out? yes or no"])
    assert isinstance(reply.full_text, str)


# --- the shared corpus -----------------------------------------------------------------------


def _corpus_messages() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    skip = {".tsv", ".md"}
    return sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.suffix not in skip)


@pytest.mark.corpus
@pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared/corpus is not present")
def test_every_corpus_file_decodes() -> None:
    """All ~1,500 corpus files (bounces, charsets, broken MIME) parse and decode without error."""
    sources: dict[str, int] = {}
    for path in _corpus_messages():
        msg = parse_message(path.read_bytes())
        text, source = text_body(msg)
        text_body(msg, include_attached_messages=True)
        assert isinstance(text, str), path
        sources[source] = sources.get(source, 0) + 1
    assert sources.get("plain", 0) > 1000
