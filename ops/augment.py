"""Random augmentations with per-sample generators, for a reproducible pipeline.

The pipeline's determinism contract: sample ``i``, copy ``k`` draws its
randomness from a generator seeded by ``(seed, source index, copy index)``,
never from worker or batch order. So every batch augmentation here is called
as ``aug(x, generators=gens)`` with ``x`` of shape ``(B, C, H, W)`` and one CPU
``torch.Generator`` per sample, and every sample draws only from its own
generator, in a fixed order:

1. the coin: one ``torch.rand((), dtype=torch.float64)`` draw ``u``; the
   augmentation applies when ``u < p``. It is always drawn, even for
   ``p == 1`` or ``p == 0``;
2. the parameters, one float64 uniform draw each, in the order of the
   constructor's arguments, whether the parameter is a fixed value or a
   ``(lo, hi)`` range (``lo + (hi - lo) u``), and whether or not the coin said
   apply;
3. for :class:`DoGNoise`, one ``torch.randint`` draw: the seed of a fresh
   generator that draws the sample's white noise.

Each augmentation therefore takes a fixed number of draws from each generator
(1 + parameters [+ 1]), whatever the coin, the image size or the batch, and
the next augmentation in a chain sees the same stream state. The application
is batched where the parameters allow and equals applying each sample alone
(to float rounding; within a float16 ulp).
:class:`RandomResizedCrop` works on one variable-size source image at a
time and follows torchvision's sampling rule instead (see there).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch

from ops._checks import (
    check_choice,
    check_float_image,
    check_image,
    check_nonnegative,
    check_pair,
    check_positive,
    check_probability,
    check_size,
    compute_dtype,
)
from ops.color import (
    _check_gray_or_rgb,
    _check_kernel_size,
    _shadows_highlights,
    _source_shadows_highlights,
    default_tone_sigma,
    invert,
)
from ops.errors import InvalidArgumentError
from ops.filters import _gaussian_blur_per_sample, gaussian_blur
from ops.geometry import resized_crop
from ops.noise import _check_band, _dog_filter, dog_band_sigmas

__all__ = [
    "Compose",
    "DoGNoise",
    "DoGNoiseParams",
    "RandomGaussianBlur",
    "RandomGaussianBlurParams",
    "RandomInvert",
    "RandomInvertParams",
    "RandomResizedCrop",
    "ShadowsHighlights",
    "ShadowsHighlightsParams",
]

Range = tuple[float, float]
P = TypeVar("P")


def _coin(generator: torch.Generator, p: float) -> bool:
    return float(torch.rand((), generator=generator, dtype=torch.float64)) < p


def _uniform(generator: torch.Generator, bounds: Range) -> float:
    u = float(torch.rand((), generator=generator, dtype=torch.float64))
    lo, hi = bounds
    return lo + (hi - lo) * u


def _seed(generator: torch.Generator) -> int:
    return int(torch.randint(0, 2**63 - 1, (), generator=generator, dtype=torch.int64))


def _value_or_range(value: Any, name: str, *, low: float, high: float) -> Range:
    """``value`` (a number or a ``(lo, hi)`` pair) as a range inside ``[low, high]``."""
    lo, hi = check_pair(value, name)
    if not (low <= lo <= hi <= high):
        rule = "lo <= hi"
        if math.isfinite(low):
            rule = f"{low} <= {rule}"
        if math.isfinite(high):
            rule = f"{rule} <= {high}"
        raise InvalidArgumentError(
            f"{name} must be a number or a (lo, hi) range with {rule}, got {value!r}"
        )
    return lo, hi


def _shown(value: Any) -> str:
    """A value as the run config writes it (a pair as ``[lo, hi]``), for messages."""
    if isinstance(value, tuple | list):
        return "[" + ", ".join(str(float(v)) for v in value) + "]"
    return str(float(value)) if isinstance(value, int | float) else repr(value)


def _shown_pair(lo: float, hi: float) -> str:
    return _shown((lo, hi))


def _check_generators(x: Any, generators: Any, name: str = "x") -> int:
    check_image(x, name)
    if x.ndim != 4:
        raise InvalidArgumentError(f"{name} must have shape (B, C, H, W), got {tuple(x.shape)}")
    batch = x.shape[0]
    if (
        not isinstance(generators, Sequence)
        or len(generators) != batch
        or not all(isinstance(g, torch.Generator) for g in generators)
    ):
        got = (
            f"{len(generators)} items"
            if isinstance(generators, Sequence)
            else type(generators).__name__
        )
        raise InvalidArgumentError(
            f"generators must be a sequence of {batch} torch.Generator (one per sample), got {got}"
        )
    for i, g in enumerate(generators):
        if g.device.type != "cpu":
            raise InvalidArgumentError(
                f"generators must be CPU generators, got device {g.device} at index {i}"
            )
    return batch


def _apply_where(
    x: torch.Tensor, applied: list[int], fn: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """``fn`` on the samples ``applied`` (a batch of them), the others copied."""
    if len(applied) == x.shape[0]:
        return fn(x)
    out = x.clone()
    if applied:
        index = torch.tensor(applied, device=x.device)
        out[index] = fn(x[index])
    return out


class _BatchAugmentation(Generic[P]):
    """Base: ``__call__`` draws each sample's params from its generator, then applies."""

    def sample_params(self, generator: torch.Generator) -> P:
        """Draw one sample's parameters from ``generator`` (coin first, then values)."""
        raise NotImplementedError

    def _apply(self, x: torch.Tensor, params: list[P]) -> torch.Tensor:
        raise NotImplementedError

    def _check_input(self, x: torch.Tensor) -> None:
        check_float_image(x)

    def __call__(self, x: torch.Tensor, *, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """Augment a batch ``(B, C, H, W)`` with one CPU generator per sample.

        Args:
            x: images ``(B, C, H, W)``.
            generators: ``B`` CPU ``torch.Generator``, sample ``i`` draws from ``generators[i]``.

        Returns:
            The augmented batch, same shape, dtype and device; ``x`` is not modified.

        Raises:
            InvalidArgumentError: bad ``x`` or ``generators``.
        """
        _check_generators(x, generators)
        self._check_input(x)
        params = [self.sample_params(g) for g in generators]
        if x.numel() == 0:
            return x.clone()
        return self._apply(x, params)


@dataclass(frozen=True)
class RandomInvertParams:
    """One sample's draw for :class:`RandomInvert`."""

    apply: bool


class RandomInvert(_BatchAugmentation[RandomInvertParams]):
    """Invert each sample with probability ``p`` (:func:`ops.color.invert`).

    Draws per sample: the coin only.

    Args:
        p: probability of inverting a sample, in ``[0, 1]``.
        max_value: passed to :func:`ops.color.invert` (white level of float images).

    Raises:
        InvalidArgumentError: ``p`` is not in ``[0, 1]``.

    Example:
        >>> aug = RandomInvert(0.5)
        >>> gens = [torch.Generator().manual_seed(i) for i in range(4)]
        >>> aug(torch.rand(4, 3, 8, 8), generators=gens).shape
        torch.Size([4, 3, 8, 8])
    """

    def __init__(self, p: float = 0.5, *, max_value: float = 1.0) -> None:
        self.p = check_probability(p, "p")
        self.max_value = max_value

    def __repr__(self) -> str:
        return f"RandomInvert(p={self.p})"

    def _check_input(self, x: torch.Tensor) -> None:
        check_image(x)

    def sample_params(self, generator: torch.Generator) -> RandomInvertParams:
        """Draw the coin."""
        return RandomInvertParams(apply=_coin(generator, self.p))

    def _apply(self, x: torch.Tensor, params: list[RandomInvertParams]) -> torch.Tensor:
        applied = [i for i, prm in enumerate(params) if prm.apply]
        return _apply_where(x, applied, lambda v: invert(v, max_value=self.max_value))


@dataclass(frozen=True)
class DoGNoiseParams:
    """One sample's draw for :class:`DoGNoise`: band in cycles per pixel, RMS, noise seed."""

    apply: bool
    band: tuple[float, float]
    rms: float
    seed: int


class DoGNoise(_BatchAugmentation[DoGNoiseParams]):
    """Add a band-pass noise mask (:func:`ops.noise.dog_noise`) to each sample: ``x + noise``.

    Draws per sample, in order: the coin, ``f_low``, ``f_high``, ``rms`` (one
    uniform each), then the seed of the sample's noise generator. The noise is
    ``dog_noise((C, H, W), band=(f_low, f_high), rms=rms,
    generator=torch.Generator().manual_seed(seed))``: its white noise is drawn
    on the CPU in float32 (float64 for float64 images), so it is the same on
    every device; the filtering runs batched on ``x``'s device. The sum is not
    clamped: it can leave ``[0, 1]``.

    Args:
        band: ``(f_low, f_high)`` in cycles per pixel, or a pair of ranges
            ``((f_low_min, f_low_max), (f_high_min, f_high_max))`` with
            ``f_low_max < f_high_min``; every band drawn must satisfy
            ``0 < f_low < f_high <= 0.5``.
        rms: the noise RMS per sample, or a ``(lo, hi)`` range, ``> 0``.
        p: probability of adding noise to a sample.

    Raises:
        InvalidArgumentError: bad ``band``, ``rms`` or ``p``.

    Example:
        >>> aug = DoGNoise((0.05, 0.2), (0.02, 0.1), p=1.0)
        >>> gens = [torch.Generator().manual_seed(i) for i in range(2)]
        >>> aug(torch.rand(2, 3, 16, 16), generators=gens).shape
        torch.Size([2, 3, 16, 16])
    """

    def __init__(
        self,
        band: tuple[float, float] | tuple[Range, Range],
        rms: float | Range,
        p: float = 1.0,
    ) -> None:
        self.low, self.high = self._check_band_ranges(band)
        self.rms = self.check_rms(rms)
        self.p = check_probability(p, "p")

    @staticmethod
    def check_band(band: Any) -> Range:
        """Return one band ``(f_low, f_high)`` after the rule ``0 < f_low < f_high <= 0.5``.

        The one rule for a noise band in cycles per pixel (0.5 is Nyquist),
        used by this class and by the run config's ``dog_noise`` step.

        Raises:
            InvalidArgumentError: not a pair of numbers, ``f_low >= f_high``, or
                outside ``(0, 0.5]``.
        """
        if not (
            isinstance(band, Sequence)
            and not isinstance(band, str)
            and len(band) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in band)
        ):
            raise InvalidArgumentError(
                "band must be a pair (f_low, f_high) in cycles per pixel with "
                f"0 < f_low < f_high <= 0.5, got {band!r}"
            )
        lo, hi = float(band[0]), float(band[1])
        if not lo < hi:
            raise InvalidArgumentError(f"f_low must be < f_high, got {_shown_pair(lo, hi)}")
        if not (0.0 < lo and hi <= 0.5):
            raise InvalidArgumentError(
                "the band must lie in (0, 0.5] cycles/pixel (0.5 is Nyquist), "
                f"got {_shown_pair(lo, hi)}"
            )
        return lo, hi

    @staticmethod
    def check_rms(rms: Any) -> Range:
        """Return ``rms`` (a number or a ``(lo, hi)`` range) as a range with ``0 < lo <= hi``.

        Raises:
            InvalidArgumentError: not a number or a range, ``lo > hi``, or ``lo <= 0``.
        """
        lo, hi = _value_or_range(rms, "rms", low=0.0, high=math.inf)
        if lo <= 0.0:
            raise InvalidArgumentError(f"rms must be > 0, got {_shown(rms)}")
        return lo, hi

    @classmethod
    def _check_band_ranges(cls, band: Any) -> tuple[Range, Range]:
        if isinstance(band, Sequence) and not isinstance(band, str) and len(band) == 2:
            if all(isinstance(v, int | float) and not isinstance(v, bool) for v in band):
                lo, hi = cls.check_band(band)
                return (lo, lo), (hi, hi)
            try:
                low = check_pair(band[0], "band")
                high = check_pair(band[1], "band")
            except InvalidArgumentError:
                low = high = (math.nan, math.nan)
            if low[0] <= low[1] and high[0] <= high[1]:
                # The extreme bands: if both are valid, every band drawn is.
                _check_band((low[1], high[0]))
                _check_band((low[0], high[1]))
                return low, high
        raise InvalidArgumentError(
            "band must be a pair (f_low, f_high) in cycles per pixel or a pair of ranges "
            f"((f_low_min, f_low_max), (f_high_min, f_high_max)), got {band!r}"
        )

    def __repr__(self) -> str:
        return f"DoGNoise(band=({self.low}, {self.high}), rms={self.rms}, p={self.p})"

    def _check_input(self, x: torch.Tensor) -> None:
        check_float_image(x)
        if x.shape[-1] * x.shape[-2] < 2 and x.numel() > 0:
            raise InvalidArgumentError(
                f"x must have H * W >= 2 for band-pass noise, got shape {tuple(x.shape)}"
            )

    def sample_params(self, generator: torch.Generator) -> DoGNoiseParams:
        """Draw the coin, ``f_low``, ``f_high``, ``rms`` and the noise seed."""
        apply = _coin(generator, self.p)
        f_low = _uniform(generator, self.low)
        f_high = _uniform(generator, self.high)
        rms = _uniform(generator, self.rms)
        return DoGNoiseParams(apply, (f_low, f_high), rms, _seed(generator))

    def _apply(self, x: torch.Tensor, params: list[DoGNoiseParams]) -> torch.Tensor:
        applied = [i for i, prm in enumerate(params) if prm.apply]
        work_dtype = compute_dtype(x.dtype)
        shape = x.shape[1:]

        def add_noise(v: torch.Tensor) -> torch.Tensor:
            chosen = [params[i] for i in applied]
            # Each sample's white noise straight into its slot of one CPU buffer.
            white = torch.empty((len(chosen), *shape), dtype=work_dtype)
            for slot, prm in zip(white, chosen, strict=True):
                torch.randn(
                    shape,
                    generator=torch.Generator().manual_seed(prm.seed),
                    dtype=work_dtype,
                    out=slot,
                )
            sigmas = [dog_band_sigmas(prm.band) for prm in chosen]
            values = torch.tensor(
                [[s1, s2, prm.rms] for (s1, s2), prm in zip(sigmas, chosen, strict=True)],
                dtype=work_dtype,
                device=x.device,
            )
            noise = _dog_filter(white.to(x.device), values[:, 0], values[:, 1], values[:, 2])
            return noise.add_(v.to(work_dtype)).to(x.dtype)

        return _apply_where(x, applied, add_noise)


@dataclass(frozen=True)
class ShadowsHighlightsParams:
    """One sample's draw for :class:`ShadowsHighlights`.

    The fields of the method not in use keep their identity values
    (``shadows = highlights = 0`` under ``"source"``, ``gamma_shadows =
    gamma_highlights = 1`` under ``"moroney"``).
    """

    apply: bool
    shadows: float = 0.0
    highlights: float = 0.0
    gamma_shadows: float = 1.0
    gamma_highlights: float = 1.0


_SH_METHODS = ("moroney", "source")


def _gamma_range(value: Any, name: str) -> Range:
    """A gamma (number > 0) or a ``(lo, hi)`` range of them, as a range."""
    lo, hi = _value_or_range(value, name, low=0.0, high=math.inf)
    if lo <= 0:
        raise InvalidArgumentError(
            f"{name} must be a number > 0 or a (lo, hi) range with 0 < lo <= hi, got {value!r}"
        )
    return lo, hi


class ShadowsHighlights(_BatchAugmentation[ShadowsHighlightsParams]):
    """Random shadows/highlights adjustment with either of the two methods.

    - ``method="source"``: the source's method, :func:`ops.color.shadows_highlights`
      (local-contrast masks from a ``kernel_size`` x ``kernel_size`` Gaussian blur
      with ``sigma``, a per-pixel power law with ``gamma_shadows`` and
      ``gamma_highlights``). Defaults: gammas 1 (identity), ``kernel_size=7``,
      ``sigma=2.5``.
    - ``method="moroney"`` (default): :func:`ops.color.adjust_shadows_highlights`
      (not from the source; amounts ``shadows``, ``highlights`` in ``[-1, 1]``,
      mask blur ``sigma``, default :func:`ops.color.default_tone_sigma`).

    Each method takes only its own parameters; passing the other method's is
    an error naming it. The default stays ``"moroney"`` because that is what
    ``ShadowsHighlights(shadows, highlights)`` has always meant: existing
    callers and configs (``{op: shadows_highlights, shadows: ..., highlights:
    ...}``) keep their meaning and their samples; a config selects the
    source's method with ``method="source"`` explicitly.

    Draws per sample, in order, for either method: the coin, then the
    method's two amounts, one uniform each (``shadows`` then ``highlights``,
    or ``gamma_shadows`` then ``gamma_highlights``): three draws whatever the
    coin or the method. Samples whose coin fails are left as they are (not
    clamped).

    Args:
        shadows: ``"moroney"`` amount in ``[-1, 1]`` or a ``(lo, hi)`` range inside it
            (default 0).
        highlights: ``"moroney"`` amount in ``[-1, 1]`` or a ``(lo, hi)`` range inside it
            (default 0).
        p: probability of adjusting a sample.
        method: ``"moroney"`` or ``"source"``.
        gamma_shadows: ``"source"`` gamma ``> 0`` or a ``(lo, hi)`` range (default 1).
        gamma_highlights: ``"source"`` gamma ``> 0`` or a ``(lo, hi)`` range (default 1).
        kernel_size: ``"source"`` blur kernel side, odd (default 7).
        sigma: blur sigma in pixels; ``None``: 2.5 (``"source"``) or
            :func:`ops.color.default_tone_sigma` (``"moroney"``).

    Raises:
        InvalidArgumentError: bad amounts, gammas, ``p``, ``method``, ``kernel_size``
            or ``sigma``, or a parameter of the other method.

    Example:
        >>> gens = [torch.Generator().manual_seed(i) for i in range(2)]
        >>> aug = ShadowsHighlights(shadows=(0.0, 0.5), highlights=-0.2)
        >>> aug(torch.rand(2, 3, 16, 16), generators=gens).shape
        torch.Size([2, 3, 16, 16])
        >>> src = ShadowsHighlights(method="source", gamma_shadows=(0.5, 1.0), gamma_highlights=1.5)
        >>> src(torch.rand(2, 3, 16, 16), generators=gens).shape
        torch.Size([2, 3, 16, 16])
    """

    def __init__(
        self,
        shadows: float | Range | None = None,
        highlights: float | Range | None = None,
        p: float = 1.0,
        *,
        method: str = "moroney",
        gamma_shadows: float | Range | None = None,
        gamma_highlights: float | Range | None = None,
        kernel_size: int | None = None,
        sigma: float | None = None,
    ) -> None:
        self.method = check_choice(method, "method", _SH_METHODS)
        self.p = check_probability(p, "p")
        others = (
            {
                "gamma_shadows": gamma_shadows,
                "gamma_highlights": gamma_highlights,
                "kernel_size": kernel_size,
            }
            if self.method == "moroney"
            else {"shadows": shadows, "highlights": highlights}
        )
        for name, value in others.items():
            if value is not None:
                raise InvalidArgumentError(
                    f"{name} is not a parameter of method={self.method!r}, got {name}={value!r}"
                )
        if self.method == "moroney":
            self.amounts = (
                self.check_amount(0.0 if shadows is None else shadows, "shadows"),
                self.check_amount(0.0 if highlights is None else highlights, "highlights"),
            )
            self.kernel_size = None
            self.sigma = None if sigma is None else check_nonnegative(sigma, "sigma")
        else:
            self.amounts = (
                self.check_gamma(1.0 if gamma_shadows is None else gamma_shadows, "gamma_shadows"),
                self.check_gamma(
                    1.0 if gamma_highlights is None else gamma_highlights, "gamma_highlights"
                ),
            )
            self.kernel_size = _check_kernel_size(7 if kernel_size is None else kernel_size)
            self.sigma = 2.5 if sigma is None else check_positive(sigma, "sigma")

    @staticmethod
    def check_amount(value: Any, name: str) -> Range:
        """A ``"moroney"`` amount: a number or ``(lo, hi)`` range inside ``[-1, 1]``.

        The one rule for it, used by this class and by the run config's step.

        Raises:
            InvalidArgumentError: not a number or a range, ``lo > hi``, or outside ``[-1, 1]``.
        """
        lo, hi = _value_or_range(value, name, low=-math.inf, high=math.inf)
        if lo < -1.0 or hi > 1.0:
            raise InvalidArgumentError(f"{name} must lie in [-1, 1], got {_shown(value)}")
        return lo, hi

    @staticmethod
    def check_gamma(value: Any, name: str) -> Range:
        """A ``"source"`` gamma: a number ``> 0`` or a ``(lo, hi)`` range of them.

        Raises:
            InvalidArgumentError: not a number or a range, ``lo > hi``, or ``lo <= 0``.
        """
        return _gamma_range(value, name)

    @property
    def shadows(self) -> Range:
        """The ``shadows`` range (``"moroney"``); ``(0, 0)`` under ``"source"``."""
        return self.amounts[0] if self.method == "moroney" else (0.0, 0.0)

    @property
    def highlights(self) -> Range:
        """The ``highlights`` range (``"moroney"``); ``(0, 0)`` under ``"source"``."""
        return self.amounts[1] if self.method == "moroney" else (0.0, 0.0)

    def __repr__(self) -> str:
        if self.method == "source":
            return (
                f"ShadowsHighlights(method='source', gamma_shadows={self.amounts[0]}, "
                f"gamma_highlights={self.amounts[1]}, p={self.p}, "
                f"kernel_size={self.kernel_size}, sigma={self.sigma})"
            )
        return (
            f"ShadowsHighlights(shadows={self.amounts[0]}, highlights={self.amounts[1]}, "
            f"p={self.p}, sigma={self.sigma})"
        )

    def _check_input(self, x: torch.Tensor) -> None:
        check_float_image(x)
        _check_gray_or_rgb(x)

    def sample_params(self, generator: torch.Generator) -> ShadowsHighlightsParams:
        """Draw the coin, then the method's two amounts (shadows first)."""
        apply = _coin(generator, self.p)
        first = _uniform(generator, self.amounts[0])
        second = _uniform(generator, self.amounts[1])
        if self.method == "source":
            return ShadowsHighlightsParams(apply, gamma_shadows=first, gamma_highlights=second)
        return ShadowsHighlightsParams(apply, shadows=first, highlights=second)

    def _apply(self, x: torch.Tensor, params: list[ShadowsHighlightsParams]) -> torch.Tensor:
        applied = [i for i, prm in enumerate(params) if prm.apply]
        work_dtype = compute_dtype(x.dtype)

        def adjust(v: torch.Tensor) -> torch.Tensor:
            if self.method == "source":
                pairs = [[params[i].gamma_shadows, params[i].gamma_highlights] for i in applied]
            else:
                pairs = [[params[i].shadows, params[i].highlights] for i in applied]
            amounts = torch.tensor(pairs, dtype=work_dtype, device=x.device)
            work = v.to(work_dtype)
            if self.method == "source":
                kernel_size = 7 if self.kernel_size is None else self.kernel_size
                sigma = 2.5 if self.sigma is None else self.sigma
                out = _source_shadows_highlights(
                    work, amounts[:, 0], amounts[:, 1], kernel_size, sigma
                )
            else:
                height, width = x.shape[-2:]
                sigma = default_tone_sigma(height, width) if self.sigma is None else self.sigma
                out = _shadows_highlights(work, amounts[:, 0], amounts[:, 1], sigma)
            return out.to(x.dtype)

        return _apply_where(x, applied, adjust)


@dataclass(frozen=True)
class RandomGaussianBlurParams:
    """One sample's draw for :class:`RandomGaussianBlur`."""

    apply: bool
    sigma: float


class RandomGaussianBlur(_BatchAugmentation[RandomGaussianBlurParams]):
    """Blur each sample with a random sigma (:func:`ops.filters.gaussian_blur`).

    Draws per sample, in order: the coin, ``sigma`` (the same on both axes).
    Samples drawing the same sigma are blurred in one batched call.

    Args:
        sigma: sigma in pixels, ``>= 0``, or a ``(lo, hi)`` range.
        p: probability of blurring a sample.
        truncate: kernel radius in units of sigma.

    Raises:
        InvalidArgumentError: bad ``sigma``, ``p`` or ``truncate``.

    Example:
        >>> aug = RandomGaussianBlur((0.1, 1.5), p=0.5)
        >>> gens = [torch.Generator().manual_seed(i) for i in range(3)]
        >>> aug(torch.rand(3, 3, 16, 16), generators=gens).shape
        torch.Size([3, 3, 16, 16])
    """

    def __init__(self, sigma: float | Range, p: float = 1.0, *, truncate: float = 4.0) -> None:
        self.sigma = self.check_sigma(sigma)
        self.p = check_probability(p, "p")
        self.truncate = check_nonnegative(truncate, "truncate")

    @staticmethod
    def check_sigma(sigma: Any) -> Range:
        """Return ``sigma`` (a number or a ``(lo, hi)`` range) as a range with ``0 <= lo <= hi``.

        Raises:
            InvalidArgumentError: not a number or a range, ``lo > hi``, or ``lo < 0``.
        """
        lo, hi = _value_or_range(sigma, "sigma", low=-math.inf, high=math.inf)
        if lo < 0.0:
            raise InvalidArgumentError(f"sigma must be >= 0, got {_shown(sigma)}")
        return lo, hi

    def __repr__(self) -> str:
        return f"RandomGaussianBlur(sigma={self.sigma}, p={self.p})"

    def sample_params(self, generator: torch.Generator) -> RandomGaussianBlurParams:
        """Draw the coin and ``sigma``."""
        apply = _coin(generator, self.p)
        return RandomGaussianBlurParams(apply, _uniform(generator, self.sigma))

    def _apply(self, x: torch.Tensor, params: list[RandomGaussianBlurParams]) -> torch.Tensor:
        applied = [i for i, prm in enumerate(params) if prm.apply]
        sigmas = [params[i].sigma for i in applied]
        if len(set(sigmas)) == 1:
            return _apply_where(
                x, applied, lambda v: gaussian_blur(v, sigmas[0], truncate=self.truncate)
            )
        return _apply_where(
            x, applied, lambda v: _gaussian_blur_per_sample(v, sigmas, truncate=self.truncate)
        )


class Compose:
    """Chain batch augmentations; each sample's generator flows through them in order.

    Example:
        >>> aug = Compose([RandomInvert(0.5), RandomGaussianBlur((0.1, 1.0))])
        >>> gens = [torch.Generator().manual_seed(i) for i in range(2)]
        >>> aug(torch.rand(2, 3, 8, 8), generators=gens).shape
        torch.Size([2, 3, 8, 8])
    """

    def __init__(self, transforms: Sequence[_BatchAugmentation[Any]]) -> None:
        for i, t in enumerate(transforms):
            if not isinstance(t, _BatchAugmentation):
                raise InvalidArgumentError(
                    f"transforms must hold batch augmentations, got {type(t).__name__} at index {i}"
                )
        self.transforms = list(transforms)

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"

    def __call__(self, x: torch.Tensor, *, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """Apply every transform in order with the same per-sample generators."""
        _check_generators(x, generators)
        out = x.clone() if not self.transforms else x
        for t in self.transforms:
            out = t(out, generators=generators)
        return out


class RandomResizedCrop:
    """Crop a random area and aspect ratio out of a source image and resize it to ``size``.

    Sampling follows torchvision's ``RandomResizedCrop.get_params`` exactly,
    with every draw taken from ``generator``: up to 10 attempts of

    .. code-block:: text

        target_area  = H * W * U(scale[0], scale[1])          (float32 uniform_)
        aspect_ratio = exp(U(log(ratio[0]), log(ratio[1])))   (float32 uniform_)
        w = round(sqrt(target_area * aspect_ratio)), h = round(sqrt(target_area / aspect_ratio))
        if 0 < w <= W and 0 < h <= H:
            top  = randint(0, H - h + 1), left = randint(0, W - w + 1); done

    then the fallback: the largest centred crop whose aspect ratio is clamped
    into ``ratio``. The crop box ``(x1, y1, x2, y2) = (left, top, left + w,
    top + h)`` is in pixel-edge coordinates. As torchvision's ``resized_crop``,
    the pixels inside it are cut out and that cut is resized on its own to
    ``size`` by :func:`ops.geometry.resized_crop` (bilinear,
    ``align_corners=False``). There is no coin: every call crops.

    Antialiasing (default on, as torchvision's ``antialias=True``): when the
    crop shrinks along an axis the bilinear (triangle) filter is widened by
    the scale factor, as Pillow's ``BILINEAR`` resize does. ``uint8`` images
    are resampled by torch's integer kernel and stay ``uint8``: this class is
    exactly what the prepare run applies to the decoded pixels.

    Args:
        size: output ``(h, w)`` or one int for a square.
        scale: range of the crop's area as a share of the source's, ``0 < lo <= hi <= 1``.
        ratio: range of the crop's aspect ratio ``w / h``, ``0 < lo <= hi``.
        antialias: blur before shrinking (see above).

    Raises:
        InvalidArgumentError: bad ``size``, ``scale`` or ``ratio``.

    References:
        C. Szegedy et al., "Going deeper with convolutions", CVPR 2015 (the
        area and aspect-ratio crop augmentation).

    Example:
        >>> rrc = RandomResizedCrop(32, scale=(0.35, 1.0))
        >>> rrc.sample_box(100, 80, torch.Generator().manual_seed(0))
        (0, 23, 79, 91)
        >>> rrc(torch.rand(3, 100, 80), generator=torch.Generator().manual_seed(0)).shape
        torch.Size([3, 32, 32])
    """

    def __init__(
        self,
        size: int | tuple[int, int],
        scale: Range = (0.08, 1.0),
        ratio: Range = (3.0 / 4.0, 4.0 / 3.0),
        *,
        antialias: bool = True,
    ) -> None:
        self.size = check_size(size, "size")
        self.scale = self.check_scale(scale)
        self.ratio = self.check_ratio(ratio)
        if not isinstance(antialias, bool):
            raise InvalidArgumentError(f"antialias must be a bool, got {antialias!r}")
        self.antialias = antialias

    @staticmethod
    def _pair_of_numbers(value: Any, name: str) -> Range:
        if not (
            isinstance(value, Sequence)
            and not isinstance(value, str)
            and len(value) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        ):
            raise InvalidArgumentError(f"{name} must be a pair (lo, hi) of numbers, got {value!r}")
        return float(value[0]), float(value[1])

    @classmethod
    def check_scale(cls, scale: Any) -> Range:
        """Return ``scale`` as ``(lo, hi)`` with ``0 < lo <= hi <= 1`` (a share of the area).

        The one rule for the crop's area, used by this class and by the run
        config's ``random_resized_crop`` step.

        Raises:
            InvalidArgumentError: not a pair of numbers, or out of ``(0, 1]``.
        """
        lo, hi = cls._pair_of_numbers(scale, "scale")
        if not (0.0 < lo <= hi <= 1.0):
            raise InvalidArgumentError(
                f"scale must satisfy 0 < lo <= hi <= 1, got {_shown_pair(lo, hi)}"
            )
        return lo, hi

    @classmethod
    def check_ratio(cls, ratio: Any) -> Range:
        """Return ``ratio`` as ``(lo, hi)`` with ``0 < lo <= hi`` (aspect ratio ``w / h``).

        Raises:
            InvalidArgumentError: not a pair of numbers, or not ``0 < lo <= hi < inf``.
        """
        lo, hi = cls._pair_of_numbers(ratio, "ratio")
        if not (0.0 < lo <= hi < math.inf):
            raise InvalidArgumentError(
                f"ratio must satisfy 0 < lo <= hi, got {_shown_pair(lo, hi)}"
            )
        return lo, hi

    def __repr__(self) -> str:
        return f"RandomResizedCrop(size={self.size}, scale={self.scale}, ratio={self.ratio})"

    def sample_box(
        self, height: int, width: int, generator: torch.Generator
    ) -> tuple[int, int, int, int]:
        """Draw a crop box ``(x1, y1, x2, y2)`` for an image of ``height x width`` pixels.

        Args:
            height: source height, ``>= 1``.
            width: source width, ``>= 1``.
            generator: the sample's CPU generator.

        Returns:
            Integer pixel-edge coordinates with ``0 <= x1 < x2 <= width`` and
            ``0 <= y1 < y2 <= height``.

        Raises:
            InvalidArgumentError: a size below 1.
        """
        if not (isinstance(height, int) and isinstance(width, int) and height >= 1 and width >= 1):
            raise InvalidArgumentError(
                f"height and width must be ints >= 1, got height={height!r}, width={width!r}"
            )
        area = height * width
        log_ratio = torch.log(torch.tensor(self.ratio, dtype=torch.float32))
        for _ in range(10):
            share = torch.empty(1, dtype=torch.float32).uniform_(
                self.scale[0], self.scale[1], generator=generator
            )
            target_area = area * share.item()
            log_aspect = torch.empty(1, dtype=torch.float32).uniform_(
                float(log_ratio[0]), float(log_ratio[1]), generator=generator
            )
            aspect_ratio = torch.exp(log_aspect).item()
            w = int(round(math.sqrt(target_area * aspect_ratio)))
            h = int(round(math.sqrt(target_area / aspect_ratio)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
                left = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
                return left, top, left + w, top + h
        in_ratio = float(width) / float(height)
        if in_ratio < min(self.ratio):
            w = width
            h = int(round(w / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            h = height
            w = int(round(h * max(self.ratio)))
        else:
            w, h = width, height
        top = (height - h) // 2
        left = (width - w) // 2
        return left, top, left + w, top + h

    def crop(self, image: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
        """Resize the integer ``box`` of ``image`` ``(*, C, H, W)`` to ``size``.

        :func:`ops.geometry.resized_crop` with this object's ``antialias``:
        float images stay float, ``uint8`` and wider integer images stay
        integers (rounded), which is how the prepare run crops its samples.
        """
        return resized_crop(image, box, self.size, antialias=self.antialias)

    def __call__(self, image: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        """Crop one source image.

        Args:
            image: ``(C, H, W)`` or ``(1, C, H, W)``, any size, floating point
                or integer (``uint8`` pixels stay ``uint8``).
            generator: the sample's CPU generator.

        Returns:
            Tensor ``(C, h, w)`` with ``(h, w) = size``, dtype and device of ``image``.

        Raises:
            InvalidArgumentError: bad ``image`` or ``generator``.
        """
        if not isinstance(image, torch.Tensor):
            raise InvalidArgumentError(f"image must be a torch.Tensor, got {type(image).__name__}")
        if image.ndim == 4 and image.shape[0] == 1:
            image = image[0]
        if image.ndim != 3:
            raise InvalidArgumentError(
                f"image must have shape (C, H, W) or (1, C, H, W), got {tuple(image.shape)}"
            )
        if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
            raise InvalidArgumentError(
                f"generator must be a CPU torch.Generator, got {generator!r}"
            )
        height, width = image.shape[-2:]
        if height == 0 or width == 0:
            raise InvalidArgumentError(
                f"image must have H >= 1 and W >= 1, got shape {tuple(image.shape)}"
            )
        return self.crop(image, self.sample_box(height, width, generator))
