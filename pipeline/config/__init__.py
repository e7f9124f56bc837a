"""The run configuration: pydantic models for the YAML contract, loading and overrides.

Modules: :mod:`~pipeline.config.schema` (the sections and :class:`RunConfig`
with its identity), :mod:`~pipeline.config.steps` (the augment steps and their
registry), :mod:`~pipeline.config.load` (YAML and validation),
:mod:`~pipeline.config.overrides` (``--set``), :mod:`~pipeline.config.messages`
(one line per problem), :mod:`~pipeline.config.reference` (the key table).

A run is described by one YAML file (``configs/*.yaml``) with five sections,
``source``, ``stats``, ``transform``, ``output`` and ``runtime``. Every key has
a default except ``source.path`` and ``output.path``. The file is validated
once, at load: unknown keys, wrong types and impossible values are errors, and
every problem is reported at once with its key path::

    transform.augment[1].band: f_low must be < f_high, got [0.3, 0.2]

Rules worth knowing:

- Relative paths in a YAML file resolve against **the folder of that file**,
  so a config means the same thing from any working directory. Paths given on
  the command line (``--set output.path=...``) resolve against the current
  working directory, as any shell user expects. A dict validated with
  :meth:`RunConfig.model_validate` resolves against ``context={"base_dir": ...}``
  when given, else the working directory. After validation every path is
  absolute, with symbolic links resolved (one folder, one store lock).
- ``source.path`` and ``output.path`` may be fsspec URLs (``s3://``, ``gs://``,
  ``az://``/``abfs://``, ``file://``, ``memory://``; see
  :mod:`pipeline.storage`): they stay canonical URL strings, and
  ``source.storage_options`` / ``output.storage_options`` give the filesystem
  its options (``endpoint_url``, credentials; default: the environment's).
  A scheme that is unknown, unsupported or not installed, or a URL that lost
  a slash (``s3:/bucket``), is an error naming the key. The options are not
  part of the config's identity, and what a store records of them has every
  possible secret redacted (:meth:`RunConfig.recorded_dict`).
- A "value or range" parameter is either a number (used as is) or a
  ``[lo, hi]`` pair (a value drawn uniformly per sample); ``lo == hi`` is
  allowed.
- ``random_resized_crop`` replaces the resize (it is applied first, wherever it
  is listed) and may appear at most once; its ``p`` must be 1.
- ``output.dtype: uint8`` stores un-normalized pixels, so it needs
  ``transform.normalize: false`` (said explicitly rather than ignored).

Example:
    >>> cfg = RunConfig.model_validate(
    ...     {"source": {"path": "/data/images"}, "output": {"path": "/out/ds.zarr"}}
    ... )
    >>> cfg.transform.size, cfg.output.dtype, cfg.output.compression.level
    ((224, 224), 'float16', 5)
    >>> cfg.transform.augment  # clean by default: no augmentation baked into the store
    ()
    >>> len(cfg.identity())
    64
"""

from pipeline.config.load import load_config, validate_config
from pipeline.config.overrides import apply_overrides, parse_override
from pipeline.config.reference import ConfigKey, config_reference, default_config_dict
from pipeline.config.schema import (
    IDENTITY_VERSION,
    NOT_IN_IDENTITY,
    PATH_KEYS,
    CompressionConfig,
    OutputConfig,
    RunConfig,
    RuntimeConfig,
    SourceConfig,
    StatsConfig,
    TransformConfig,
    config_differences,
)
from pipeline.config.steps import (
    STEPS,
    AugmentStep,
    DogNoiseStep,
    GaussianBlurStep,
    InvertStep,
    RandomResizedCropStep,
    ShadowsHighlightsStep,
    Step,
)

__all__ = [
    "IDENTITY_VERSION",
    "NOT_IN_IDENTITY",
    "PATH_KEYS",
    "STEPS",
    "AugmentStep",
    "CompressionConfig",
    "ConfigKey",
    "DogNoiseStep",
    "GaussianBlurStep",
    "InvertStep",
    "OutputConfig",
    "RandomResizedCropStep",
    "RunConfig",
    "RuntimeConfig",
    "ShadowsHighlightsStep",
    "SourceConfig",
    "StatsConfig",
    "Step",
    "TransformConfig",
    "apply_overrides",
    "config_differences",
    "config_reference",
    "default_config_dict",
    "load_config",
    "parse_override",
    "validate_config",
]
