"""One checker for every op (torchvision's ``check_kernel``, kornia's ``BaseTester``).

``check_op(fn, x, **kwargs)`` asserts, for a function ``fn(x, **kwargs)`` of
images ``(B, C, H, W)``:

- the input is not modified (its ``_version`` and its values are unchanged);
- the output keeps dtype and device;
- batched equals unbatched (each ``x[i]`` of shape ``(C, H, W)`` alone);
- with ``gradcheck=True``, ``torch.autograd.gradcheck`` passes in float64;
- on a machine with CUDA, the CUDA result equals the CPU result within the
  dtype's tolerance.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float64: {"rtol": 1e-10, "atol": 1e-10},
    torch.float32: {"rtol": 1e-5, "atol": 1e-5},
    torch.float16: {"rtol": 2e-3, "atol": 2e-3},
    torch.bfloat16: {"rtol": 1.6e-2, "atol": 1.6e-2},
}


def tol(dtype: torch.dtype) -> dict[str, float]:
    """Per-dtype tolerance for comparing two computations of one op."""
    return TOLERANCES.get(dtype, {"rtol": 0.0, "atol": 0.0})


def _outputs(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [o for o in out if isinstance(o, torch.Tensor)]


def check_op(
    fn: Callable[..., Any],
    x: torch.Tensor,
    *args: Any,
    gradcheck: bool = False,
    check_batched: bool = True,
    check_cuda: bool = True,
    **kwargs: Any,
) -> Any:
    """Run the shared op checks; return ``fn(x, *args, **kwargs)``."""
    assert x.ndim >= 4, "check_op wants a batch (B, C, H, W)"
    before = x.clone()
    version = x._version
    out = fn(x, *args, **kwargs)
    assert x._version == version, "op modified its input in place"
    torch.testing.assert_close(x, before, rtol=0, atol=0, msg="op changed its input")
    for o in _outputs(out):
        assert o.device == x.device, f"device changed: {x.device} -> {o.device}"
        if o.is_floating_point() and x.is_floating_point():
            assert o.dtype == x.dtype, f"dtype changed: {x.dtype} -> {o.dtype}"
        elif not x.is_floating_point():
            assert o.dtype == x.dtype, f"dtype changed: {x.dtype} -> {o.dtype}"

    if check_batched and x.shape[0] > 0:
        singles = [fn(x[i], *args, **kwargs) for i in range(x.shape[0])]
        for k, o in enumerate(_outputs(out)):
            stacked = torch.stack([_outputs(s)[k] for s in singles])
            torch.testing.assert_close(o, stacked, **tol(x.dtype), msg="batched != unbatched")

    if gradcheck:
        xd = x.detach().to(torch.float64).requires_grad_(True)

        def f64(inp: torch.Tensor) -> Any:
            res = fn(inp, *args, **kwargs)
            # masks and indices are not differentiable: check the float outputs
            return tuple(o for o in _outputs(res) if o.is_floating_point())

        assert torch.autograd.gradcheck(f64, (xd,), eps=1e-6, atol=1e-5, fast_mode=True)

    if check_cuda and torch.cuda.is_available() and x.device.type == "cpu":
        out_cuda = fn(x.cuda(), *args, **kwargs)
        for o_cpu, o_gpu in zip(_outputs(out), _outputs(out_cuda), strict=True):
            torch.testing.assert_close(o_gpu.cpu(), o_cpu, **tol(x.dtype), msg="CUDA != CPU")
    return out
