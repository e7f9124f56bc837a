"""Prefect 3.8.8's client against a server on FastAPI 0.151 or later: no ``null`` for unset filters.

Prefect's read endpoints (``POST .../filter``, ``POST .../count``) take each
filter, ``sort``, ``limit`` and ``offset`` as a separate body field with a
default. Up to FastAPI 0.150, a field sent as JSON ``null`` got its default;
from FastAPI 0.151 on, ``null`` is validated as a value, so ``"limit": null``
fails with ``422 Input should be a valid integer``. Prefect 3.8.8's client
sends ``null`` for every argument it was not given. The first victim for
imageprep was ``prefect deploy`` (and ``Flow.deploy``): after creating the
deployment it asks whether a worker of the pool is online with
``read_workers_for_work_pool(pool, worker_filter=...)``, which sends
``"offset": null, "limit": null``; the CLI then exits 1 although the
deployment exists.

:func:`install` makes Prefect's HTTP clients leave such ``null`` fields out of
the JSON body of those requests, which is exactly what the server did with
them before FastAPI 0.151 (a missing field gets its default). Nothing else is
changed: other requests, nested values and non-``null`` fields go out as
Prefect built them. It is installed by :mod:`flows.tasks` (so by every flow
module, including the deployment entrypoints that ``prefect deploy`` imports
before it makes that request).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

__all__ = ["drop_null_filters", "install"]

_READ_ENDPOINTS = ("/filter", "/count")
_MARK = "_imageprep_drops_null_filters"


def drop_null_filters(method: str, url: object, body: Any) -> Any:
    """Return ``body`` without its top-level ``None`` values for a ``POST`` to a read endpoint.

    Example:
        >>> drop_null_filters("POST", "/work_pools/p/workers/filter",
        ...                   {"workers": {"status": None}, "offset": None, "limit": None})
        {'workers': {'status': None}}
        >>> drop_null_filters("PATCH", "/deployments/1", {"description": None})
        {'description': None}
    """
    if not isinstance(body, dict) or str(method).upper() != "POST":
        return body
    path = str(url).split("?", 1)[0].rstrip("/")
    if not path.endswith(_READ_ENDPOINTS) or all(v is not None for v in body.values()):
        return body
    return {k: v for k, v in body.items() if v is not None}


def _wrap(build_request: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(build_request)
    def wrapper(self: Any, method: str, url: Any, *args: Any, **kwargs: Any) -> Any:
        if "json" in kwargs:
            kwargs["json"] = drop_null_filters(method, url, kwargs["json"])
        return build_request(self, method, url, *args, **kwargs)

    setattr(wrapper, _MARK, True)
    return wrapper


def install() -> None:
    """Patch Prefect's async and sync HTTP clients once (idempotent)."""
    from prefect.client.base import PrefectHttpxAsyncClient, PrefectHttpxSyncClient

    for cls in (PrefectHttpxAsyncClient, PrefectHttpxSyncClient):
        if not getattr(cls.build_request, _MARK, False):
            cls.build_request = _wrap(cls.build_request)  # type: ignore[method-assign]
