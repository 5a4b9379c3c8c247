"""Documents in, chunks with provenance out: `loaders` reads files into sections under their
headings, `chunking` cuts sections into sentence-aligned chunks of a token size."""
from .chunking import Chunk, chunk_documents, section_sentences, token_counter
from .document import Document, Section, UnreadableFile
from .loaders import load_document, load_paths

__all__ = ["Chunk", "chunk_documents", "section_sentences", "token_counter", "Document", "Section",
           "UnreadableFile", "load_document", "load_paths"]
