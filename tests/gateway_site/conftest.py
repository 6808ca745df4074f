"""The operator API's staff client (tests/operators/conftest.py), for the tests here that use it."""

from tests.operators.conftest import operator

__all__ = ["operator"]
