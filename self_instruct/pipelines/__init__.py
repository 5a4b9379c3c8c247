"""Pipelines: what to ask a teacher and how to read its answers. Each runs on self_instruct.engine."""
