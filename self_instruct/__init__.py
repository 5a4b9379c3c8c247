"""self_instruct: grow instruction-tuning data from seed tasks with a teacher LLM."""
from .errors import ConfigError, SeedFormatError, SelfInstructError, TeacherError
from .types import Completion, Decoding, Example, Instance, SeedTask

__version__ = "0.1.0"
