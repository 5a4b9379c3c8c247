"""Pipelines: what to ask the teacher and how to read its answers, one module each, all run
by the same engine (alpaca: the self-instruct loop; documents: chunks of the user's text)."""
