"""The example run configs (YAML), installed as the package data ``imageprep_configs``."""
