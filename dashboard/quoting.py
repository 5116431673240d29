"""Values from a link or a file, shown safely in Markdown: shortened and quoted (`quote`) or escaped (`md_text`)."""
from __future__ import annotations

import re

SHOWN_CHARS = 40  # a value echoed in a note is cut to this many characters


def quote(value) -> str:
    """A value from a link, safe to show in Markdown: shortened, in a code span, no backticks or line breaks."""
    text = str(value)
    if len(text) > SHOWN_CHARS:
        text = text[:SHOWN_CHARS - 1] + "…"
    text = "".join(" " if ch.isspace() or not ch.isprintable() else ch for ch in text)
    return "`" + text.replace("`", "ˋ") + "`"  # ˋ (U+02CB) looks like a backtick but cannot close the span


def md_text(text: str) -> str:
    """A message that may hold a value from a file or a link (a path, a tensor name), shown as plain text in
    Markdown: every character that opens a Markdown, HTML or Streamlit construct (image, link, tag, code,
    emphasis, colour, math) is backslash-escaped, so it shows as typed and nothing is fetched."""
    return re.sub(r"([\\`*_{}\[\]()<>#!|~$])", r"\\\1", str(text))
