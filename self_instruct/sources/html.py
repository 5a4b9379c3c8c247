"""HTML pages and EPUB chapters, walked as a browser lays them out (lxml): inline text, wherever
it sits (in a <p>, a <div>, a <dd>, a <td> or bare in the <body>), runs into paragraphs that
block elements break; headings come from <h1>-<h6> only; <pre> blocks and inline code are kept
character for character. What is not the document stays out: scripts, styles, navigation,
forms, hidden elements and headings' permalink anchors ("¶", "#"); and on a web page, the page's
chrome around its main content (below).

Not trafilatura's main-content extraction: on documentation pages it kept text in <p> only
(zlib's annotated example lost half its words), read C lines and `#` comments in <pre> as
Markdown headings and rewrote code spans, and no share of the body it keeps tells a page it
read wrongly from one with a lot of boilerplate. A page says where its content is instead:
<main>, role="main" or a single <article>, else the body without page-level <header> and
<footer> and without blocks whose class or id names navigation (menu, navbar, breadcrumbs...).
"""
from __future__ import annotations

import codecs
import re
import unicodedata
from pathlib import Path

from .document import Document, SectionBuilder, UnreadableFile, need


def load_html(path: Path) -> Document:
    """A page's text under its headings' paths, in the page's declared charset (else detected).

    Example: <h1>Setup</h1><div>Run <code>make</code>.</div> -> sections (('Setup',), 'Run make.')
    """
    need("lxml")
    from lxml import etree, html

    # huge_tree: past 255 levels of nesting libxml2 would drop the rest of the page.
    parser = html.HTMLParser(encoding="utf-8", remove_comments=True, remove_pis=True, huge_tree=True)
    try:
        root = html.document_fromstring(decode_page(path.read_bytes()).encode("utf-8"), parser=parser)
    except etree.ParserError:  # "Document is empty"
        raise UnreadableFile("no text found in the page (it is empty)") from None
    if any(error.type_name == "ERR_RESOURCE_LIMIT" for error in parser.error_log):
        # libxml2 stops there, and the rest of the page would be lost without a word.
        raise UnreadableFile("elements nested more than 2,048 deep (unclosed tags?): close them and load it again")
    builder = SectionBuilder()
    html_blocks(main_content(root), builder)
    document = builder.build(str(path))
    if not document.sections:
        raise UnreadableFile("no text found in the page (a page that scripts fill in must be saved from the "
                             "browser after it renders)")
    return document


# --- what the page is written in ---

_META_CHARSET = re.compile(rb"""<meta\b[^>]*?charset\s*=\s*["']?\s*([\w.:-]+)""", re.IGNORECASE)
_XML_ENCODING = re.compile(rb"""^\s*<\?xml\b[^>]*?encoding\s*=\s*["']([\w.:-]+)""")
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))


def decode_page(raw: bytes) -> str:
    """The page's text: by its byte-order mark, else the charset its <meta> (or XML declaration)
    declares in the first 4 KiB, else UTF-8 when it is valid UTF-8, else charset_normalizer's guess
    (windows-1252 among guesses it scores the same); bytes that are text in no encoding (a binary
    file) raise UnreadableFile.
    Like browsers, a declared ISO-8859-1 or ASCII reads as windows-1252, and bytes the declared
    charset does not have become U+FFFD.

    Example: decode_page(b'<meta charset="iso-8859-1"><p>caf\\xe9') -> '<meta charset="iso-8859-1"><p>café'
    """
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            return raw[len(bom):].decode(encoding, errors="replace")
    declared = _declared_charset(raw[:4096])
    if declared:
        return raw.decode(declared, errors="replace")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    guesses = list(need("charset_normalizer", "charset-normalizer").from_bytes(raw))
    if not guesses:
        raise UnreadableFile("its bytes read as text in no encoding: if it is a web page, "
                             'declare its charset (<meta charset="...">)')
    # Western text reads alike in windows-1252, -1250 and -1257 as far as the detector can tell
    # (é and è score the same as é and č): between equals, take the one browsers fall back to.
    best = [g for g in guesses if (g.chaos, g.coherence) == (guesses[0].chaos, guesses[0].coherence)]
    return str(next((g for g in best if g.encoding == "cp1252"), guesses[0]))


def _declared_charset(head: bytes) -> str | None:
    match = _META_CHARSET.search(head) or _XML_ENCODING.match(head)
    if not match:
        return None
    try:
        name = codecs.lookup(match.group(1).decode("ascii")).name
    except LookupError:
        return None  # a label Python does not know: detect instead
    if name in ("latin-1", "iso8859-1", "ascii"):
        return "cp1252"  # what browsers read these labels as
    if name.startswith(("utf-16", "utf-32")):
        return "utf-8"  # a <meta> read as ASCII cannot be in UTF-16: browsers take UTF-8
    return name


# --- where the content is ---

# Not "sidebar": DocBook's and docutils' sidebars are text of the document.
_CHROME_NAMES = {"nav", "navbar", "navigation", "navheader", "navfooter", "menu", "menubar", "breadcrumb",
                 "breadcrumbs", "footer", "cookie", "cookies", "skip", "skiplink"}
_CHROME_TAGS = {"div", "ul", "ol", "dl", "table", "section", "aside", "header", "footer", "form", "a"}
_SECTIONING = {"article", "section", "main", "aside"}


def main_content(root):
    """The element a page's content is in, the page's chrome taken out around it: page-level
    <header> and <footer> (outside any article or section), navigation, forms' widgets, hidden
    elements, and blocks whose class or id names navigation ("navbar", "NAVFOOTER", "site-menu",
    "skip-link"...). The content is the page's one <main> (or role="main"), or its one <article>,
    when that holds at least half of the words left (a <main> around a banner alone is not the
    page); else the whole <body>."""
    body = root.find("body")
    if body is None:
        return root
    # The outermost <main> or role="main" (a <main> may sit in a role="main"), if there is one only.
    marked = body.xpath(".//main[not(ancestor::main or ancestor::*[@role='main'])]"
                        " | .//*[@role='main'][not(ancestor::main or ancestor::*[@role='main'])]")
    articles = body.xpath(".//article")
    region = marked[0] if len(marked) == 1 else articles[0] if not marked and len(articles) == 1 else None
    around = [region, *region.iterancestors()] if region is not None else []
    for element in list(body.iter()):
        tag = element.tag if isinstance(element.tag, str) else ""
        if not tag or any(element is a for a in around) or any(a is region for a in element.iterancestors()):
            continue  # the content and what holds it stay; inside it, the walk skips what is not text
        if _skipped(element, tag) or _page_chrome(element, tag):
            element.drop_tree()  # drop_tree keeps the text after the element: that is its parent's
    if region is not None and 2 * _words(region) >= _words(body):
        return region
    return body


def _page_chrome(element, tag: str) -> bool:
    if tag in ("header", "footer") and not any(a.tag in _SECTIONING for a in element.iterancestors()):
        return True
    # A block with a heading in it is a part of the document, whatever its name: pandoc gives a
    # section under "Navigation" the id "navigation".
    return tag in _CHROME_TAGS and _named_chrome(element) and next(element.iter(*_HEADINGS), None) is None


def _words(element) -> int:
    return len(element.text_content().split())


def _named_chrome(element) -> bool:
    """Whether the element's class or id names page chrome: any of its hyphen- or
    underscore-separated parts ("site-nav" has "nav"; "navigation-bar", "navigation")."""
    names = f"{element.get('class', '')} {element.get('id', '')}".lower()
    return any(part in _CHROME_NAMES for part in re.split(r"[^a-z0-9]+", names))


# --- the walk ---

_HEADING = re.compile(r"h([1-6])")
_HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")
# Elements whose start and end break the flow of text into paragraphs; every other element is inline.
_BLOCKS = {"address", "article", "aside", "blockquote", "body", "caption", "center", "dd", "details", "dialog",
           "dir", "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "header", "hgroup",
           "hr", "html", "legend", "li", "main", "menu", "ol", "p", "section", "summary", "table", "tbody",
           "td", "tfoot", "th", "thead", "tr", "ul"}
_PREFORMATTED = {"pre", "listing", "xmp", "plaintext"}
# Not text of the document: code, widgets, and what only a screen or a pointer uses.
_SKIPPED = {"script", "style", "noscript", "template", "head", "title", "nav", "button", "select", "option",
            "input", "textarea", "datalist", "svg", "canvas", "iframe", "object", "embed", "audio", "video"}
_SKIPPED_ROLES = {"navigation", "search", "banner", "contentinfo", "menu", "menubar", "toolbar",
                  "doc-toc", "doc-pagelist", "doc-pagebreak"}
_PERMALINK_TEXT = {"", "¶", "#", "§", "🔗"}
_PERMALINK_CLASSES = {"headerlink", "anchor", "anchorjs-link", "permalink", "heading-anchor", "header-anchor"}
_COLLAPSIBLE = re.compile(r"[ \t\n\r\f]+")  # HTML's whitespace: a no-break space is not collapsed
_BREAK = None  # a <br> in the flow of text


def html_blocks(root, builder: SectionBuilder) -> None:
    """Feed `builder` the headings and paragraphs of `root` (its <body>, when it has one) in
    reading order. Inline text between block elements is one paragraph, whitespace collapsed as
    a browser shows it and <br> kept as a line break; <pre> is kept as written. An iterative
    walk: a page may nest thousands of unclosed <font>s.

    Example: <div>Intro <b>text</b><p>Para.</p>tail</div> -> paragraphs 'Intro text', 'Para.', 'tail'
    """
    from lxml import etree

    body = root.find(".//body") if root.tag == "html" else None
    top = body if body is not None else root
    walk = _Walk(builder)
    kinds = []  # what each open element is: "block", "inline", or "done" (skipped, or read whole)
    events = etree.iterwalk(top, events=("start", "end", "comment", "pi"))
    for event, element in events:
        if event == "start":
            kinds.append(walk.start(element))
            if kinds[-1] == "done":
                events.skip_subtree()  # its "end" still comes
            continue
        if event == "end":
            walk.end(element, kinds.pop())
        if element is not top and element.tail:  # the text after an element is its parent's
            walk.line.append(element.tail)
    walk.flush()


class _Walk:
    def __init__(self, builder: SectionBuilder) -> None:
        self.builder = builder
        self.line: list[str | None] = []  # the inline text of the paragraph being read
        self.marker = ""  # an ordered list item's number, for the item's first paragraph
        self.lists: list[list] = []  # each open <ol>'s [next number, type]

    def start(self, element) -> str:
        tag = element.tag
        if _skipped(element, tag):
            return "done"
        heading = _HEADING.fullmatch(tag)
        if heading:
            self.flush()
            self.builder.heading(int(heading.group(1)), _collapse(_text(element)))
            return "done"
        if tag in _PREFORMATTED:
            self.flush()
            self.builder.code(_text(element))
            return "done"
        if tag == "br":
            self.line.append(_BREAK)
            return "done"
        kind = "inline"
        if tag in _BLOCKS:
            self.flush()
            kind = "block"
            if tag == "ol":
                self.lists.append([_integer(element.get("start"), 1), element.get("type", "1")])
            elif tag == "li" and self.lists and element.getparent().tag == "ol":
                number = self.lists[-1][0] = _integer(element.get("value"), self.lists[-1][0])
                self.lists[-1][0] += 1
                # The number waits for the item's first text, which may be in a <p> inside it.
                self.marker = kind = _ordinal(number, self.lists[-1][1])
        if element.text:
            self.line.append(element.text)
        return kind

    def end(self, element, kind: str) -> None:
        if kind == "done" or kind == "inline":
            return
        self.flush()
        if element.tag == "ol":
            self.lists.pop()
        elif kind != "block":  # a numbered item: its number goes with it
            self.marker = ""

    def take(self) -> list[str]:
        """The lines of the paragraph read so far (split at <br>), whitespace collapsed."""
        lines, current = [], []
        for piece in self.line + [_BREAK]:
            if piece is _BREAK:
                lines.append(_collapse("".join(current)))
                current = []
            else:
                current.append(piece)
        self.line = []
        return lines

    def flush(self) -> None:
        text = "\n".join(self.take()).strip()
        if text:
            self.builder.paragraph(self.marker + text)
            self.marker = ""


def _integer(value: str | None, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _ordinal(number: int, kind: str) -> str:
    """An ordered list item's marker as a browser shows it, by <ol type>: "3. ", "c. ", "iii. "."""
    if kind in ("a", "A") and number > 0:
        letters = ""
        while number:
            number, digit = divmod(number - 1, 26)
            letters = chr(ord("a") + digit) + letters
        return (letters if kind == "a" else letters.upper()) + ". "
    if kind in ("i", "I") and 0 < number < 4000:
        roman = ""
        for value, numeral in ((1000, "m"), (900, "cm"), (500, "d"), (400, "cd"), (100, "c"), (90, "xc"),
                               (50, "l"), (40, "xl"), (10, "x"), (9, "ix"), (5, "v"), (4, "iv"), (1, "i")):
            count, number = divmod(number, value)
            roman += numeral * count
        return (roman if kind == "i" else roman.upper()) + ". "
    return f"{number}. "


def _collapse(text: str) -> str:
    """Whitespace as a browser shows it (CSS Text 3): a run is one space, but a line break
    between two Chinese or Japanese characters is none (they are written without spaces).

    Example: _collapse(" a \\n b 文\\n字 ") -> 'a b 文字'
    """
    def space(run: re.Match) -> str:
        text, start, end = run.string, run.start(), run.end()
        if "\n" in run.group() and 0 < start and end < len(text) and _wide(text[start - 1]) and _wide(text[end]):
            return ""
        return " "

    return _COLLAPSIBLE.sub(space, text).strip(" ")


def _wide(char: str) -> bool:
    hangul = "\u1100" <= char <= "\u11ff" or "\u3130" <= char <= "\u318f" or "\uac00" <= char <= "\ud7af"
    return unicodedata.east_asian_width(char) in ("F", "W", "H") and not hangul


def _skipped(element, tag: str) -> bool:
    if tag in _SKIPPED or element.get("hidden") is not None or element.get("aria-hidden") == "true":
        return True
    if _SKIPPED_ROLES & set(element.get("role", "").lower().split()):
        return True
    return tag == "a" and _permalink(element)


def _permalink(anchor) -> bool:
    """A heading's link to itself: an in-page link whose text is a mark ("¶", "#", an icon)
    or whose class says so (Sphinx's "headerlink", GitHub's "anchor")."""
    if not anchor.get("href", "").startswith("#"):
        return False
    classes = set(anchor.get("class", "").lower().split())
    return bool(classes & _PERMALINK_CLASSES) or anchor.text_content().strip().lower() in _PERMALINK_TEXT


def _text(element) -> str:
    """An element's text as written, less what the walk skips (a heading's permalink, a "copy"
    button in a <pre>); a <br> is a line break, and newlines are "\\n"."""
    from lxml import etree

    pieces = [element.text or ""]
    events = etree.iterwalk(element, events=("start", "end", "comment", "pi"))
    for event, node in events:
        if node is element:
            continue
        if event == "start":
            if node.tag == "br":
                pieces.append("\n")
            elif _skipped(node, node.tag):
                events.skip_subtree()
            else:
                pieces.append(node.text or "")
        else:  # the text after a node, skipped or not
            pieces.append(node.tail or "")
    return "".join(pieces).replace("\r\n", "\n").replace("\r", "\n")
