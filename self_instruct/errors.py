"""The errors a user may see. The CLI turns each into one line on stderr and exit status 2."""


class SelfInstructError(Exception):
    """Base class: an expected failure whose message says what to do."""


class ConfigError(SelfInstructError, ValueError):
    """A flag, a template or an output directory that cannot be used as given."""


class DataError(SelfInstructError, ValueError):
    """A data file that cannot be read as given: not UTF-8, not JSON, wrong shape (the message names file:line)."""


class SeedFormatError(DataError):
    """A seed or input file that does not follow its schema (the message names file:line: field)."""


class TeacherError(SelfInstructError):
    """The teacher cannot be reached or used at all (not a single failed request)."""
