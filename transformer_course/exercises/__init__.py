"""Exercise checkers: `base` holds the contract, one module per chapter (`ch01`, ...) holds its checks."""
from . import base, ch01
from .base import CheckResult, check_tensor, checker, run_with_timeout
