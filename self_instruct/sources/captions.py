"""Caption files (.srt, .vtt), read with webvtt-py: the cues' text without timestamps or tags."""
from __future__ import annotations

from pathlib import Path

from .document import Document, Section, UnreadableFile, need


def load_captions(path: Path) -> Document:
    """Caption text without timestamps or tags, lines joined so sentences span cues. Rolling
    captions repeat the previous line in the next cue; a line equal to the last one is dropped."""
    webvtt = need("webvtt", "webvtt-py")
    try:
        captions = webvtt.from_srt(str(path)) if path.suffix.lower() == ".srt" else webvtt.read(str(path))
        lines: list[str] = []
        for caption in captions:
            for line in caption.text.split("\n"):
                line = " ".join(line.split())
                if line and (not lines or line != lines[-1]):
                    lines.append(line)
    except Exception as exc:  # webvtt-py raises MalformedFileError, MalformedCaptionError, ValueError
        raise UnreadableFile(f"not a readable caption file ({type(exc).__name__}: {exc})") from None
    text = " ".join(lines)
    if not text:
        raise UnreadableFile("the caption file holds no text")
    return Document(str(path), text, (Section((), 0, len(text)),))
