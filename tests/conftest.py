"""Shared fixtures: devices, dtypes, the ``gpu`` marker's skip rule, an S3 test server."""

from __future__ import annotations

import pytest
import torch

# The S3-compatible test server (moto) and a bucket per test: see tests/s3server.py.
from tests.s3server import s3_bucket, s3_server  # noqa: F401

CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if CUDA:
        return
    skip = pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(
    params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)],
)
def device(request: pytest.FixtureRequest) -> torch.device:
    """Every device the op must run on; CUDA cases carry the ``gpu`` marker."""
    return torch.device(request.param)


@pytest.fixture(params=[torch.float32, torch.float64, torch.float16], ids=str)
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    """Floating dtypes every op must keep."""
    return request.param
