"""The augmentation steps of ``transform.augment``: one registry, op name -> model -> ops class.

Each step is a config model (its keys, defaults and descriptions) that knows
the :mod:`ops` augmentation it configures (:meth:`Step.ops_class`) and
builds it (:meth:`Step.build`). The rules on the values (a band inside
``(0, 0.5]``, ``rms > 0``, ``scale`` inside ``(0, 1]``, ...) are the ops
classes' own checks (``DoGNoise.check_band``, ``RandomResizedCrop.check_scale``,
...): the config calls them, so a value the config accepts is one the kernel
accepts, and the message is the same. The models only shape YAML values into
numbers and ``[lo, hi]`` ranges.

:data:`STEPS` maps each op name to its model; :data:`AugmentStep` is the
discriminated union pydantic validates a list item with.

Example:
    >>> step = DogNoiseStep(op="dog_noise", band=(0.05, 0.2), rms=0.08)
    >>> step.build((64, 64))
    DoGNoise(band=((0.05, 0.05), (0.2, 0.2)), rms=(0.08, 0.08), p=1.0)
    >>> sorted(STEPS)
    ['dog_noise', 'gaussian_blur', 'invert', 'random_resized_crop', 'shadows_highlights']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import Field, ValidationInfo, field_validator, model_validator

import ops
from ops.errors import InvalidArgumentError
from pipeline.config._values import Model, Pair, PositiveInt, Probability, ValueOrRange, show

__all__ = [
    "STEPS",
    "AugmentStep",
    "DogNoiseStep",
    "GaussianBlurStep",
    "InvertStep",
    "RandomResizedCropStep",
    "ShadowsHighlightsStep",
    "Step",
]


def _rule(check: Callable[[Any], Any], value: Any) -> Any:
    """Apply an ops class's value check; its message becomes the key's message."""
    try:
        check(value)
    except InvalidArgumentError as exc:
        raise ValueError(str(exc)) from None
    return value


class Step(Model):
    """Base of the augment steps: ``op`` names the step, ``p`` its probability."""

    #: The name of the :mod:`ops` class this step configures (loaded on use, so
    #: that importing the config does not import torch).
    augmentation: ClassVar[str]

    @classmethod
    def ops_class(cls) -> type:
        """The :mod:`ops` augmentation class of this step."""
        cls_: type = getattr(ops, cls.augmentation)
        return cls_

    op: str
    p: Probability = Field(default=1.0, description="Probability of applying the step to a sample.")

    def build(self, size: tuple[int, int]) -> Any:
        """The :mod:`ops` augmentation of this step for samples of ``size`` ``(H, W)``."""
        raise NotImplementedError


class InvertStep(Step):
    """``1 - x`` on the [0, 1] image, with probability ``p``."""

    augmentation = "RandomInvert"
    op: Literal["invert"] = Field(description="Invert the image: 1 - x.")

    def build(self, size: tuple[int, int]) -> ops.RandomInvert:
        """:class:`ops.RandomInvert` with this step's ``p``."""
        return ops.RandomInvert(p=self.p)


class DogNoiseStep(Step):
    """Band-pass (difference-of-Gaussians) noise added to the image."""

    augmentation = "DoGNoise"
    op: Literal["dog_noise"] = Field(description="Add band-pass (DoG-filtered) Gaussian noise.")
    band: Pair = Field(
        description="[f_low, f_high] in cycles/pixel, 0 < f_low < f_high <= 0.5: the noise's "
        "spectral peak sits at their geometric mean (not a pass band: see docs/ops.md)."
    )
    rms: ValueOrRange = Field(
        description="RMS of the added noise (> 0), a value or a [lo, hi] range."
    )

    @field_validator("band")
    @classmethod
    def _check_band(cls, band: tuple[float, float]) -> tuple[float, float]:
        return _rule(ops.DoGNoise.check_band, band)

    @field_validator("rms")
    @classmethod
    def _check_rms(cls, rms: float | tuple[float, float]) -> float | tuple[float, float]:
        return _rule(ops.DoGNoise.check_rms, rms)

    def build(self, size: tuple[int, int]) -> ops.DoGNoise:
        """:class:`ops.DoGNoise` with this step's band, rms and ``p``."""
        return ops.DoGNoise(band=self.band, rms=self.rms, p=self.p)


class ShadowsHighlightsStep(Step):
    """Shadows/highlights tone adjustment, by the source's method or the Moroney-style curve.

    ``method: source`` is the technique of the source (local-contrast masks
    from a Gaussian blur of the luminance, a per-pixel power law with
    ``gamma_shadows`` and ``gamma_highlights``: :func:`ops.shadows_highlights`);
    ``method: moroney`` is a luma power law with ``shadows``/``highlights``
    amounts in ``[-1, 1]`` (:func:`ops.adjust_shadows_highlights`; not from the
    source). Without ``method``, the keys given choose it (gammas: source;
    amounts: moroney; none: source).
    """

    augmentation = "ShadowsHighlights"
    op: Literal["shadows_highlights"] = Field(description="Shadows/highlights tone adjustment.")
    method: Literal["source", "moroney"] | None = Field(
        default=None,
        description="source (the source's masks and power law) | moroney (luma curve); "
        "default: chosen by the keys given (source without any).",
    )
    gamma_shadows: ValueOrRange | None = Field(
        default=None,
        description="source: exponent in shadows (< 1 lifts), > 0, a value or a [lo, hi] range "
        "(default 1).",
    )
    gamma_highlights: ValueOrRange | None = Field(
        default=None,
        description="source: exponent in highlights (> 1 darkens), > 0, a value or a range "
        "(default 1).",
    )
    kernel_size: PositiveInt | None = Field(
        default=None, description="source: odd side of the mask blur kernel (default 7)."
    )
    sigma: ValueOrRange | None = Field(
        default=None,
        description="Mask blur sigma in pixels (source: 2.5; moroney: from the image size).",
    )
    shadows: ValueOrRange | None = Field(
        default=None,
        description="moroney: shadow amount in [-1, 1] (> 0 lifts), a value or a [lo, hi] range.",
    )
    highlights: ValueOrRange | None = Field(
        default=None,
        description="moroney: highlight amount in [-1, 1] (< 0 darkens), a value or a range.",
    )

    @field_validator("shadows", "highlights")
    @classmethod
    def _check_amount(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return None
        name = str(info.field_name)
        return _rule(lambda v: ops.ShadowsHighlights.check_amount(v, name), value)

    @field_validator("gamma_shadows", "gamma_highlights")
    @classmethod
    def _check_gamma(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return None
        name = str(info.field_name)
        return _rule(lambda v: ops.ShadowsHighlights.check_gamma(v, name), value)

    @field_validator("sigma")
    @classmethod
    def _check_sigma(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, float):
            raise ValueError(f"sigma must be one number, got {show(list(value))}")
        return value

    @model_validator(mode="after")
    def _check_method(self) -> ShadowsHighlightsStep:
        try:
            self.build((8, 8))  # the class's own rules: the other method's keys, kernel size
        except InvalidArgumentError as exc:
            raise ValueError(str(exc)) from None
        return self

    @property
    def resolved_method(self) -> str:
        """The method in use (``method``, or the one the keys given imply)."""
        if self.method is not None:
            return self.method
        if self.shadows is not None or self.highlights is not None:
            return "moroney"
        return "source"

    def build(self, size: tuple[int, int]) -> ops.ShadowsHighlights:
        """:class:`ops.ShadowsHighlights` with this step's method, parameters and ``p``."""
        sigma = self.sigma if isinstance(self.sigma, float) else None
        if self.resolved_method == "moroney":
            return ops.ShadowsHighlights(
                shadows=self.shadows,
                highlights=self.highlights,
                p=self.p,
                method="moroney",
                gamma_shadows=self.gamma_shadows,
                gamma_highlights=self.gamma_highlights,
                kernel_size=self.kernel_size,
                sigma=sigma,
            )
        return ops.ShadowsHighlights(
            shadows=self.shadows,
            highlights=self.highlights,
            p=self.p,
            method="source",
            gamma_shadows=self.gamma_shadows,
            gamma_highlights=self.gamma_highlights,
            kernel_size=self.kernel_size,
            sigma=sigma,
        )


class GaussianBlurStep(Step):
    """Gaussian blur with standard deviation ``sigma`` (pixels)."""

    augmentation = "RandomGaussianBlur"
    op: Literal["gaussian_blur"] = Field(description="Gaussian blur.")
    sigma: ValueOrRange = Field(
        description="Standard deviation in pixels (>= 0), a value or a [lo, hi] range."
    )

    @field_validator("sigma")
    @classmethod
    def _check_sigma(cls, sigma: float | tuple[float, float]) -> float | tuple[float, float]:
        return _rule(ops.RandomGaussianBlur.check_sigma, sigma)

    def build(self, size: tuple[int, int]) -> ops.RandomGaussianBlur:
        """:class:`ops.RandomGaussianBlur` with this step's sigma and ``p``."""
        return ops.RandomGaussianBlur(sigma=self.sigma, p=self.p)


class RandomResizedCropStep(Step):
    """A random crop of random area and aspect ratio, resized to ``transform.size``.

    It replaces the resize: it is applied first, wherever it is listed.
    """

    augmentation = "RandomResizedCrop"
    op: Literal["random_resized_crop"] = Field(
        description="Random crop resized to transform.size; replaces the resize."
    )
    scale: Pair = Field(
        default=(0.08, 1.0), description="[lo, hi] crop area as a fraction of the image, in (0, 1]."
    )
    ratio: Pair = Field(
        default=(0.75, 4.0 / 3.0), description="[lo, hi] crop aspect ratio W/H, > 0."
    )
    p: Probability = Field(default=1.0, description="Must be 1 (the crop replaces the resize).")

    @field_validator("scale")
    @classmethod
    def _check_scale(cls, scale: tuple[float, float]) -> tuple[float, float]:
        return _rule(ops.RandomResizedCrop.check_scale, scale)

    @field_validator("ratio")
    @classmethod
    def _check_ratio(cls, ratio: tuple[float, float]) -> tuple[float, float]:
        return _rule(ops.RandomResizedCrop.check_ratio, ratio)

    @field_validator("p")
    @classmethod
    def _check_p(cls, p: float) -> float:
        if p != 1.0:
            raise ValueError(f"random_resized_crop replaces the resize, so p must be 1, got {p}")
        return p

    def build(self, size: tuple[int, int]) -> ops.RandomResizedCrop:
        """:class:`ops.RandomResizedCrop` to ``size`` with this step's scale and ratio."""
        return ops.RandomResizedCrop(size, scale=self.scale, ratio=self.ratio)


#: The step models pydantic chooses between by ``op`` (the registry's one listing).
AugmentStep = Annotated[
    InvertStep | DogNoiseStep | ShadowsHighlightsStep | GaussianBlurStep | RandomResizedCropStep,
    Field(discriminator="op"),
]

#: op name -> step model.
STEPS: dict[str, type[Step]] = {
    get_args(model.model_fields["op"].annotation)[0]: model
    for model in get_args(get_args(AugmentStep)[0])
}
