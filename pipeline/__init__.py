"""imageprep's library layer: plain functions and dataclasses, usable without Prefect.

Submodules are imported lazily by their users so that ``imageprep --help`` and
``import pipeline`` stay fast; nothing heavy is imported here.
"""

__version__ = "0.1.0"
