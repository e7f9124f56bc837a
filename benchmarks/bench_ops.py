"""Benchmark imageprep's ops against kornia on one batch, in the same run.

Usage::

    .venv/bin/python benchmarks/bench_ops.py                      # (64, 3, 224, 224), CPU
    .venv/bin/python benchmarks/bench_ops.py --batch 16 --size 128 --repeats 5
    .venv/bin/python benchmarks/bench_ops.py --device cuda        # adds copy-bandwidth shares

Each op runs on a float32 batch; the time is the median of ``--repeats`` runs
after ``--warmup`` runs, ours and kornia's runs alternating (CUDA timings
synchronize). ``ratio`` is ours / kornia
(below 1: we are faster). ``max|diff|`` compares the two outputs where they
compute the same thing; the Gaussian blurs differ at the border on purpose
(ours reflects half-sample symmetric like SciPy, kornia's ``"reflect"`` is
whole-sample), so their speed is compared anyway. On CUDA the ``copy share``
column is ``time(x.clone()) / time(op)``: the op's effective bandwidth as a
share of a device-to-device copy of the batch, which reads and writes every
element once (ops that read more than they write can exceed 1 by that factor).

kornia (pinned to 0.9.0 in constraints.txt) is a benchmark-only dependency:
``.venv/bin/python -m pip install -c constraints.txt kornia``. Without it the
script still times our ops and says that the comparison is missing.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch

import ops
from ops.noise import dog_band_sigmas

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


@dataclass
class Case:
    name: str
    ours: Callable[[], Any]
    kornia: Callable[[], Any] | None = None
    note: str = ""
    compare: bool = True  # print max|diff| of the two outputs


def _load_kornia() -> ModuleType | None:
    try:
        return importlib.import_module("kornia")
    except ImportError:
        return None


def _timer(device: torch.device, warmup: int, repeats: int) -> Callable[..., list[float]]:
    """Time functions in alternation: run ``i`` of each before run ``i + 1`` of any.

    Alternating keeps a burst of load from another process from landing on one
    side of a comparison only. Returns each function's median time in seconds.
    """

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def run(*fns: Callable[[], Any]) -> list[float]:
        for fn in fns:
            for _ in range(warmup):
                fn()
        sync()
        times: list[list[float]] = [[] for _ in fns]
        for _ in range(repeats):
            for fn, bucket in zip(fns, times, strict=True):
                start = time.perf_counter()
                fn()
                sync()
                bucket.append(time.perf_counter() - start)
        return [statistics.median(bucket) for bucket in times]

    return run


def _ms(seconds: float) -> str:
    """Milliseconds, about 3 significant digits (small sizes run in microseconds)."""
    ms = seconds * 1e3
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    return f"{ms:.3g}"


def _radius(sigma: float) -> int:
    return int(4.0 * sigma + 0.5)


def _cases(x: torch.Tensor, kornia: ModuleType | None, seed: int) -> list[Case]:
    device = x.device
    batch, _, height, width = x.shape
    k = kornia
    mean_t = torch.tensor(MEAN, device=device)
    std_t = torch.tensor(STD, device=device)
    cases: list[Case] = []

    for sigma in (1.0, 3.0):
        ks = 2 * _radius(sigma) + 1
        cases.append(
            Case(
                f"gaussian_blur sigma={sigma:g} (k={ks})",
                lambda s=sigma: ops.gaussian_blur(x, s),
                (
                    (lambda s=sigma, n=ks: k.filters.gaussian_blur2d(x, (n, n), (s, s), "reflect"))
                    if k
                    else None
                ),
                "borders differ (half- vs whole-sample reflect)",
                compare=False,
            )
        )

    lo, hi = 1.0, 1.6
    kl, kh = 2 * _radius(lo) + 1, 2 * _radius(hi) + 1
    cases.append(
        Case(
            "difference_of_gaussians 1.0/1.6",
            lambda: ops.difference_of_gaussians(x, lo, hi),
            (
                (
                    lambda: (
                        k.filters.gaussian_blur2d(x, (kl, kl), (lo, lo), "reflect")
                        - k.filters.gaussian_blur2d(x, (kh, kh), (hi, hi), "reflect")
                    )
                )
                if k
                else None
            ),
            "kornia: two gaussian_blur2d; borders differ",
            compare=False,
        )
    )
    one = torch.tensor(1.0, device=device)
    cases.append(
        Case("invert", lambda: ops.invert(x), (lambda: k.enhance.invert(x, one)) if k else None)
    )
    cases.append(
        Case(
            "normalize",
            lambda: ops.normalize(x, MEAN, STD),
            (lambda: k.enhance.normalize(x, mean_t, std_t)) if k else None,
        )
    )
    cases.append(
        Case(
            "denormalize",
            lambda: ops.denormalize(x, MEAN, STD),
            (lambda: k.enhance.denormalize(x, mean_t, std_t)) if k else None,
        )
    )
    cases.append(
        Case(
            "luminance",
            lambda: ops.luminance(x),
            (lambda: k.color.rgb_to_grayscale(x)) if k else None,
            "kornia: rgb_to_grayscale (same BT.601 weights)",
        )
    )
    cases.append(Case("standardize", lambda: ops.standardize(x), None, "no kornia equivalent"))
    cases.append(
        Case(
            "adjust_shadows_highlights",
            lambda: ops.adjust_shadows_highlights(x, shadows=0.4, highlights=0.3),
            None,
            f"no kornia equivalent; mask sigma {ops.default_tone_sigma(height, width):g}",
        )
    )

    # crop_resize: one random box per image, in kornia's inclusive pixel-index
    # coordinates (align_corners=True on both sides), so the outputs agree.
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randint(0, width // 2, (batch,), generator=g).float()
    y1 = torch.randint(0, height // 2, (batch,), generator=g).float()
    x2 = x1 + torch.randint(width // 4, width // 2, (batch,), generator=g).float()
    y2 = y1 + torch.randint(height // 4, height // 2, (batch,), generator=g).float()
    boxes = torch.stack([x1, y1, x2, y2], dim=1).to(device)
    corners = torch.stack(
        [torch.stack(c, dim=-1) for c in ((x1, y1), (x2, y1), (x2, y2), (x1, y2))], dim=1
    ).to(device)
    out_size = (height, width)
    cases.append(
        Case(
            "crop_resize (one box per image)",
            lambda: ops.crop_resize(x, boxes, out_size, align_corners=True, padding_mode="zeros"),
            (lambda: k.geometry.transform.crop_and_resize(x, corners, out_size)) if k else None,
            "kornia: crop_and_resize",
        )
    )

    band = (0.05, 0.2)
    s1, s2 = dog_band_sigmas(band)
    k1, k2 = 2 * _radius(s1) + 1, 2 * _radius(s2) + 1

    def dog_noise() -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return ops.dog_noise(x.shape, band=band, rms=0.08, generator=gen, device=device)

    def kornia_dog_noise() -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        white = torch.randn(x.shape, generator=gen).to(device)
        noise = k.filters.gaussian_blur2d(
            white, (k1, k1), (s1, s1), "reflect"
        ) - k.filters.gaussian_blur2d(white, (k2, k2), (s2, s2), "reflect")
        var, mean = torch.var_mean(noise, dim=(1, 2, 3), keepdim=True, correction=0)
        return (noise - mean) * (0.08 * var.rsqrt())

    cases.append(
        Case(
            f"dog_noise band={band}",
            dog_noise,
            kornia_dog_noise if k else None,
            f"kornia: CPU randn + two blurs (sigmas {s1:.2f}, {s2:.2f}) + RMS fix",
            compare=False,
        )
    )
    aug = ops.DoGNoise(band, 0.08, p=1.0)

    def noise_add() -> torch.Tensor:
        return aug(x, generators=[torch.Generator().manual_seed(seed + i) for i in range(batch)])

    def kornia_noise_add() -> torch.Tensor:
        return x + kornia_dog_noise()

    cases.append(
        Case(
            "DoGNoise add (per-sample generators)",
            noise_add,
            kornia_noise_add if k else None,
            "kornia: one-generator noise as above, added",
            compare=False,
        )
    )
    blur_aug = ops.RandomGaussianBlur((0.1, 2.0), p=1.0)
    sigmas = torch.stack(
        [
            torch.tensor(
                [blur_aug.sample_params(torch.Generator().manual_seed(seed + i)).sigma] * 2
            )
            for i in range(batch)
        ]
    ).to(device=device, dtype=x.dtype)
    cases.append(
        Case(
            "RandomGaussianBlur sigma~U(0.1, 2)",
            lambda: blur_aug(
                x, generators=[torch.Generator().manual_seed(seed + i) for i in range(batch)]
            ),
            (lambda: k.filters.gaussian_blur2d(x, (17, 17), sigmas, "reflect")) if k else None,
            "kornia: gaussian_blur2d with per-sample sigmas, kernel 17",
            compare=False,
        )
    )
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64, help="images per batch (default 64)")
    parser.add_argument("--size", type=int, default=224, help="image height = width (default 224)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per op (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per op first")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch.set_num_threads value"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random batch")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    kornia = _load_kornia()
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.rand(args.batch, 3, args.size, args.size, generator=gen).to(device)
    timer = _timer(device, args.warmup, args.repeats)

    print(
        f"imageprep ops vs kornia: batch {tuple(x.shape)} float32 on {device}; "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"{platform.processor() or platform.machine()}"
    )
    if device.type == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(device)}")
    if kornia is None:
        print(
            "kornia is NOT installed: no comparison. Install it with "
            "`.venv/bin/python -m pip install -c constraints.txt kornia`."
        )
    else:
        print(f"kornia {kornia.__version__}")
    print(f"median of {args.repeats} runs after {args.warmup} warm-up runs\n")

    clone_t = timer(lambda: x.clone())[0] if device.type == "cuda" else None
    header = "| op | ours ms | kornia ms | ours/kornia | max\\|diff\\| |"
    rule = "|---|---:|---:|---:|---:|"
    if clone_t is not None:
        header += " copy share |"
        rule += "---:|"
    print(header + " note |")
    print(rule + "---|")
    for case in _cases(x, kornia, args.seed):
        if case.kornia is not None:
            ours_t, theirs_t = timer(case.ours, case.kornia)
        else:
            (ours_t,) = timer(case.ours)
        cells = [case.name, _ms(ours_t)]
        if case.kornia is not None:
            cells += [_ms(theirs_t), f"{ours_t / theirs_t:.2f}"]
            if case.compare:
                diff = (case.ours().float() - case.kornia().float()).abs().max().item()
                cells.append(f"{diff:.1e}")
            else:
                cells.append("-")
        else:
            cells += ["-", "-", "-"]
        if clone_t is not None:
            cells.append(f"{clone_t / ours_t:.2f}")
        cells.append(case.note)
        print("| " + " | ".join(cells) + " |")
    if clone_t is not None:
        print(f"\nx.clone(): {clone_t * 1e3:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
