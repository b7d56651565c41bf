"""Companion package of "Transformers from the Ground Up": one module per concept, shown in the chapters."""
from . import exercises
from .notebook import report_close, setup_notebook, show_source
from .utils import default_device, seed_everything

__version__ = "0.1.0"
