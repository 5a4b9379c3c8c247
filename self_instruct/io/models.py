"""Local model files the trainer writes and evaluate reads back: the one rule both follow when a
pad token was added, so that a saved LoRA adapter loads onto the base model exactly as trained."""
from __future__ import annotations


def resize_embeddings(model, tokenizer) -> None:
    """Grow the embeddings to the tokenizer's size, after a pad token was added.

    New rows start at the mean of the existing ones (as Alpaca does), so the token looks like an
    average token rather than noise. The rows depend only on the base weights: to load a saved
    adapter, call this on the base model with the saved tokenizer and get the same rows back.
    A vocabulary padded beyond the tokenizer (rows >= len(tokenizer)) is left as it is.
    """
    import torch

    old_rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) <= old_rows:
        return
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        for embedding in (model.get_input_embeddings(), model.get_output_embeddings()):
            if embedding is not None:
                embedding.weight[old_rows:] = embedding.weight[:old_rows].mean(dim=0)
