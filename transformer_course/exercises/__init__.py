"""Exercise checkers: `base` holds the contract, one module per chapter (`ch01`, `ch02`, ...) holds its checks.

Chapter modules are imported on first use (`tc.exercises.ch02`), so importing the package stays light and a new
chapter's module needs no registration here.
"""
import importlib
import re

from . import base
from .base import CheckResult, check_tensor, checker, run_with_timeout


def __getattr__(name):
    if re.fullmatch(r"ch\d\d", name):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
