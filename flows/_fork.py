"""Keep forked children of a process that ran a flow from exiting with status 1.

Prefect 3.8.8 resets its queue services in a forked child
(``_reset_services_after_fork``) but leaves their ``threading`` exit hooks
registered; at the child's exit the hook drains a service whose event loop is
gone and fails an assertion, so the child exits with status 1. A
``DataLoader(num_workers>0)`` started after a flow in the same process then
reports "worker exited unexpectedly". After Prefect's own reset, this handler
turns draining those services into a no-op in the child: they were reset, and
the child never started them.
"""

from __future__ import annotations

import concurrent.futures
import os

__all__ = ["install"]

_installed = False


def _drained(at_exit: bool = False) -> concurrent.futures.Future[bool]:
    future: concurrent.futures.Future[bool] = concurrent.futures.Future()
    future.set_result(False)
    return future


def _after_fork_in_child() -> None:
    try:
        from prefect._internal.concurrency import services
    except ImportError:  # pragma: no cover - Prefect's layout changed
        return
    for service in list(getattr(services, "_active_services", ())):
        if getattr(service, "_done_event", None) is None:
            service._drain = _drained


def install() -> None:
    """Register the after-fork handler once (after Prefect's own, which runs first)."""
    global _installed
    if _installed or not hasattr(os, "register_at_fork"):
        return
    import prefect._internal.concurrency.services  # noqa: F401  (registers Prefect's handler)

    os.register_at_fork(after_in_child=_after_fork_in_child)
    _installed = True
