"""self_instruct: grow instruction-tuning data from seed tasks with a teacher LLM.

The stages, left to right: load_seed_tasks -> encode_prompt -> Teacher.complete ->
parse_completion -> Judge (filters, duplicates, RougeIndex) -> InstructionPool; every pipeline
(pipelines/alpaca.py, pipelines/documents.py) runs on one Engine; `generate` and `documents`
set a run up.
Importing this module is light: the teacher SDK loads only when a teacher is made.
"""
from .core.filters import DEFAULT_FILTERS, first_rejection
from .core.parse import parse_completion
from .core.prompts import encode_prompt, load_list_template
from .core.seeds import load_seed_tasks, seed_examples
from .core.similarity import Match, RougeIndex
from .engine.judge import Judge
from .engine.pool import InstructionPool
from .engine.scheduler import Engine
from .errors import ConfigError, SeedFormatError, SelfInstructError, TeacherError
from .pipelines.base import Pipeline, UnitResult
from .teachers.base import Teacher
from .types import Completion, Decoding, Example, Instance, Rejection, SeedTask

__version__ = "0.1.0"


def generate(output_dir: str = "out", **options):
    """Run or resume generation; see self_instruct.generate.generate for the options."""
    from .generate import generate as _generate
    return _generate(output_dir, **options)


__all__ = [
    "ConfigError", "SeedFormatError", "SelfInstructError", "TeacherError", "DEFAULT_FILTERS", "first_rejection",
    "Rejection", "parse_completion", "InstructionPool", "encode_prompt", "load_list_template", "load_seed_tasks",
    "seed_examples", "Match", "RougeIndex", "Teacher", "Completion", "Decoding", "Example", "Instance", "SeedTask",
    "generate", "Engine", "Pipeline", "UnitResult", "Judge",
]
