"""Real documents nobody here wrote, as Debian ships them (libtasn1-doc, shared-mime-info;
.ci/run installs them with poppler-utils): read clean, against pdftotext's extraction. Each
test skips where its document or pdftotext is absent."""
from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest

from self_instruct.sources.loaders import load_document

pytest.importorskip("pypdf", reason="needs the [docs] extra")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import fidelity  # noqa: E402

LIBTASN1 = Path("/usr/share/doc/libtasn1-doc/libtasn1.pdf")
MIME_SPEC = Path("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf")


def present(path: Path):
    if not path.exists():
        pytest.skip(f"{path} absent (apt-get install {path.parts[4]})")
    return load_document(path)


def paragraphs(text: str) -> list[str]:
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]


def test_libtasn1_manual_is_clean():
    doc = present(LIBTASN1)
    inside = [p for p in paragraphs(doc.text) if re.search(r"(Chapter \d+|Appendix A): [A-Z]", p)]
    assert inside == []  # "Chapter 4: Function reference 10" ran through 15 of 43 chunks
    assert fidelity.leaders(doc.text) == 0 and "manipulation" in doc.text and "manip-\n" not in doc.text
    assert len(paragraphs(doc.text)) > 200
    headings = {h for s in doc.sections for h in s.headings}
    assert {"2.1 ASN.1 syntax", "4.3 DER functions", "A.1 GNU Free Documentation License"} <= headings
    assert all(s.end - s.start > 4 for s in doc.sections)  # no section is a stray "2.1"


def test_mime_spec_page_numbers_and_titles_leave_sentences():
    doc = present(MIME_SPEC)
    flat = " ".join(doc.text.split())
    assert "Information found in a directory is added" in flat
    assert not re.search(r"\b\d{1,2} Shared MIME-info Database\b", flat)
    assert len(paragraphs(doc.text)) > 100


@pytest.mark.parametrize("path", [LIBTASN1, MIME_SPEC], ids=lambda p: p.name)
def test_word_recall_against_pdftotext(path):
    doc = present(path)
    if not shutil.which("pdftotext"):
        pytest.skip("pdftotext absent (apt-get install poppler-utils)")
    pages, running, _ = fidelity.pdf_reference(str(path))
    body = "\n".join("\n".join(fidelity.body_lines(page, running)) for page in pages)
    recall, precision = fidelity.overlap(fidelity.words(doc.text), fidelity.words(body))
    assert recall >= 0.97 and precision >= 0.97
    assert fidelity.seams_with_garbage(doc.text, pages, running)[1] == 0
    assert fidelity.headers_inside(doc.text, running, body) == 0
