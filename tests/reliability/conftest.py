"""The hostile stack (a real gateway behind real servers) for every test of this folder."""

from tests.reliability.hostile_stack import hostile_stack

__all__ = ["hostile_stack"]
