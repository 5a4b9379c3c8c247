"""Caption files in any common encoding, and only rolling-caption repeats dropped: a line said
twice is kept twice."""
from __future__ import annotations

import pytest

from self_instruct.sources.document import UnreadableFile
from self_instruct.sources.loaders import load_document

pytest.importorskip("webvtt", reason="needs the [docs] extra")

FILM = """1
00:00:01,000 --> 00:00:03,000
Où est le café ? — “Over there,” she said.

2
00:00:03,500 --> 00:00:05,000
Hello?

3
00:00:06,000 --> 00:00:07,500
Hello?

4
00:00:08,000 --> 00:00:10,000
Naïve of me, I know.
"""

ROLLING = """WEBVTT

00:00:00.000 --> 00:00:02.000
so today we are going to

00:00:02.000 --> 00:00:02.010
so today we are going to

00:00:02.010 --> 00:00:04.000
so today we are going to
talk about tomatoes

00:00:04.000 --> 00:00:04.010
talk about tomatoes

00:00:04.010 --> 00:00:06.000
talk about tomatoes
and how they grow
"""


@pytest.mark.parametrize("encoding", ["cp1252", "utf-16", "utf-8-sig"])
def test_captions_in_any_common_encoding(tmp_path, encoding):
    path = tmp_path / "film.srt"
    path.write_bytes(FILM.replace("\n", "\r\n").encode(encoding))
    doc = load_document(path)
    assert doc.text == "Où est le café ? — “Over there,” she said. Hello? Hello? Naïve of me, I know."


def test_rolling_captions_drop_only_the_carried_lines(tmp_path):
    path = tmp_path / "talk.vtt"
    path.write_text(ROLLING, encoding="utf-8")
    assert load_document(path).text == "so today we are going to talk about tomatoes and how they grow"


def test_bytes_in_no_encoding_are_one_line(tmp_path):
    path = tmp_path / "noise.srt"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(UnreadableFile) as exc:
        load_document(path)
    assert "\n" not in str(exc.value)
