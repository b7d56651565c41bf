import pathlib
import sys

# Let tests import their helpers (tests/browser.py) by name.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
