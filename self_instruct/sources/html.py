"""HTML pages: the main text (trafilatura, without navigation, menus and footers), and the walk
of a page's headings and innermost blocks that EPUB chapters are read with."""
from __future__ import annotations

import re
from pathlib import Path

from .document import Document, SectionBuilder, UnreadableFile, markdown_sections, need


def load_html(path: Path) -> Document:
    """The page's main text (trafilatura), as Markdown so its headings are kept."""
    trafilatura = need("trafilatura")
    raw = path.read_bytes()
    text = trafilatura.extract(raw, output_format="markdown", include_formatting=True, include_comments=False,
                               include_tables=True, favor_recall=True)
    if not text or not text.strip():
        raise UnreadableFile("no main text found in the page")
    return Document(str(path), text, markdown_sections(text))


_HEADING = re.compile(r"h([1-6])")
_BLOCKS = {"p", "li", "pre", "blockquote", "dd", "dt", "td", "th", "figcaption", "div", "section", "article",
           "h1", "h2", "h3", "h4", "h5", "h6", "table", "tr", "ul", "ol", "dl", "aside", "header", "footer"}


def html_blocks(root, builder: SectionBuilder) -> None:
    """Headings and the innermost blocks (a <div> that holds <p>s gives the <p>s, not itself)."""
    body = root.find(".//body")
    for element in (body if body is not None else root).iter():
        tag = element.tag if isinstance(element.tag, str) else ""
        heading = _HEADING.fullmatch(tag)
        if heading:
            builder.heading(int(heading.group(1)), element.text_content())
        elif tag in _BLOCKS and not any(isinstance(d.tag, str) and d.tag in _BLOCKS for d in element.iterdescendants()):
            if not any(_HEADING.fullmatch(a.tag) for a in element.iterancestors() if isinstance(a.tag, str)):
                builder.paragraph(element.text_content())
