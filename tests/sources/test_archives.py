"""Zip bombs: an EPUB or DOCX member whose size, declared or actual, passes the cap is never
inflated into memory; the file is skipped with one line saying why and the others load."""
from __future__ import annotations

import struct
import tracemalloc
import zipfile

import pytest
from test_sources import make_docx, make_epub

from self_instruct.sources.document import TooLarge, UnreadableFile
from self_instruct.sources.loaders import load_document, load_files

pytest.importorskip("lxml", reason="needs the [docs] extra")

CAP = 2**20
BOMB = 64 * 2**20  # zeros: 64 MB that deflate to about 64 KB


def bomb_epub(path, *, lie: bool = False):
    """An EPUB whose one chapter inflates to 64 MB; `lie`: its central directory says 1,000 bytes."""
    make_epub(path, ["<p>x</p>"], replace={"OEBPS/c0.xhtml": b"<p>" + b"\0" * BOMB + b"</p>"})
    if lie:
        data = bytearray(path.read_bytes())
        entry = _central_entry(data, b"OEBPS/c0.xhtml")
        data[entry + 24:entry + 28] = struct.pack("<I", 1000)
        path.write_bytes(bytes(data))
    return path


def _central_entry(data: bytearray, name: bytes) -> int:
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        size = struct.unpack("<H", data[at + 28:at + 30])[0]
        if data[at + 46:at + 46 + size] == name:
            return at
        at = data.find(b"PK\x01\x02", at + 4)
    raise AssertionError(f"{name!r} not in the central directory")


def peak_while(action):
    tracemalloc.start()
    try:
        action()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_an_epub_member_over_the_cap_is_skipped_unread(tmp_path):
    path = bomb_epub(tmp_path / "bomb.epub")
    assert path.stat().st_size < 2 * 2**20
    caught = []

    def load():
        with pytest.raises(TooLarge) as exc:
            load_document(path, max_bytes=CAP)
        caught.append(str(exc.value))

    assert peak_while(load) < 8 * CAP
    assert caught == ["EPUB member OEBPS/c0.xhtml holds 64.0 MB uncompressed, over the 1.0 MB cap (--max_file_mb)"]


def test_a_member_that_lies_about_its_size_is_not_inflated_past_it(tmp_path):
    path = bomb_epub(tmp_path / "liar.epub", lie=True)
    with zipfile.ZipFile(path) as book:
        assert book.getinfo("OEBPS/c0.xhtml").file_size == 1000

    def load():
        with pytest.raises(UnreadableFile, match="^not a readable EPUB \\(OEBPS/c0.xhtml: Bad CRC-32"):
            load_document(path, max_bytes=CAP)

    assert peak_while(load) < 8 * CAP


def test_a_docx_with_a_member_over_the_cap_is_skipped(tmp_path):
    path = make_docx(tmp_path / "report.docx", [("h1", "Report"), ("p", "Fine text.")])
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as word:
        word.writestr("word/media/huge.bin", b"\0" * BOMB)
    with pytest.raises(TooLarge, match=r"^DOCX member word/media/huge.bin holds 64.0 MB uncompressed"):
        load_document(path, max_bytes=CAP)
    assert load_document(path, max_bytes=2 * BOMB).text == "Report\n\nFine text."


def test_a_file_over_the_cap_is_skipped_and_the_rest_load(tmp_path):
    (tmp_path / "big.txt").write_text("word " * 300_000, encoding="utf-8")
    (tmp_path / "small.txt").write_text("A small note.", encoding="utf-8")
    bomb_epub(tmp_path / "bomb.epub")
    loaded = load_files([tmp_path], max_bytes=CAP)
    assert [d.text for d in loaded.documents] == ["A small note."]
    assert [(p.rsplit("/", 1)[-1], why.split(",")[0]) for p, why in loaded.skipped] == [
        ("big.txt", "the file holds 1.4 MB"), ("bomb.epub", "EPUB member OEBPS/c0.xhtml holds 64.0 MB uncompressed")]
