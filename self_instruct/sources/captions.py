"""Caption files (.srt, .vtt), read with webvtt-py: the cues' text without timestamps or tags,
in any common encoding (UTF-8 first, else what charset-normalizer finds: Windows-1252, UTF-16,
Latin-1 ...)."""
from __future__ import annotations

import io
from pathlib import Path

from .document import Document, Section, UnreadableFile, need

# A cue shorter than this that only repeats the one before is a rolling caption's transition
# (YouTube's automatic captions show each line again for 10 ms as it scrolls up).
TRANSITION_SECONDS = 0.1


def load_captions(path: Path) -> Document:
    """Caption text without timestamps or tags, lines joined so sentences span cues. Rolling
    captions carry the previous cue's last lines over as the first lines of the next; those
    repeats are dropped, but a line said twice, in cues of its own, is kept twice."""
    webvtt = need("webvtt", "webvtt-py")
    text = decode_text(path.read_bytes())
    try:
        captions = webvtt.from_buffer(io.StringIO(text, newline=None), format="srt" if path.suffix.lower() == ".srt" else "vtt")
        lines: list[str] = []
        previous: list[str] = []
        for caption in captions:
            cue = [" ".join(line.split()) for line in caption.text.split("\n")]
            cue = [line for line in cue if line]
            carried = _carried_over(previous, cue)
            brief = caption.end_in_seconds - caption.start_in_seconds < TRANSITION_SECONDS
            lines += cue[carried:] if carried and (carried < len(cue) or brief) else cue
            previous = cue
    except Exception as exc:  # webvtt-py raises MalformedFileError, MalformedCaptionError, ValueError
        raise UnreadableFile(f"not a readable caption file ({type(exc).__name__}: {exc})") from None
    joined = " ".join(lines)
    if not joined:
        raise UnreadableFile("the caption file holds no text")
    return Document(str(path), joined, (Section((), 0, len(joined)),))


def _carried_over(previous: list[str], cue: list[str]) -> int:
    """How many of the cue's first lines are the previous cue's last lines.

    Example: _carried_over(["a", "b"], ["b", "c"]) -> 1
    """
    for k in range(min(len(previous), len(cue)), 0, -1):
        if previous[-k:] == cue[:k]:
            return k
    return 0


def decode_text(data: bytes) -> str:
    """UTF-8 (a BOM allowed), else the encoding charset-normalizer finds most likely."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    charset_normalizer = need("charset_normalizer", "charset-normalizer")
    matches = charset_normalizer.from_bytes(data)
    best = matches.best()
    if best is None:
        raise UnreadableFile("not text in any encoding charset-normalizer knows")
    # A short text can read equally well in several code pages (cp1250, cp1252, cp1257 agree on
    # most of Western European text): a tie goes to the most widespread one.
    tied = {m.encoding: m for m in matches if (m.chaos, m.coherence) == (best.chaos, best.coherence)}
    return str(next((tied[e] for e in _WIDESPREAD if e in tied), best))


_WIDESPREAD = ("cp1252", "latin_1", "iso8859_15")
