"""Teacher backends behind one protocol (see base.Teacher)."""
from .base import Teacher

__all__ = ["Teacher"]
