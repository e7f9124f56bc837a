"""An S3-compatible server for tests: moto's server mode on a free loopback port.

Fixtures (imported into ``tests/conftest.py``, so every test can use them):

- ``s3_server`` (session): a :class:`MotoS3Server` started once; its
  ``requests`` log counts every HTTP request it answers (method, path, query),
  for tests that check how many requests an operation costs.
- ``s3_bucket`` (per test): a new, empty bucket on that server, as an
  :class:`S3Bucket` with the ``storage_options`` that s3fs needs to reach it
  (``endpoint_url``, ``key``, ``secret``, ``client_kwargs.region_name``).

No internet and no AWS account: credentials are dummies, and the AWS
environment variables of the machine are masked for the test.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

REGION = "us-west-2"  # not us-east-1: s3fs sends a LocationConstraint, which us-east-1 rejects


@dataclass(frozen=True)
class Request:
    """One HTTP request the server answered."""

    method: str
    path: str
    query: str


@dataclass
class MotoS3Server:
    """moto's S3 in a thread, on 127.0.0.1 and a free port, with a request log."""

    host: str = "127.0.0.1"
    port: int = 0
    requests: list[Request] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        app = DomainDispatcherApplication(create_backend_app)

        def counting(environ: dict[str, Any], start_response: Any) -> Any:
            with self._lock:
                self.requests.append(
                    Request(
                        environ["REQUEST_METHOD"],
                        environ.get("PATH_INFO", ""),
                        environ.get("QUERY_STRING", ""),
                    )
                )
            return app(environ, start_response)

        self._server = make_server(
            self.host, 0, counting, threaded=True, request_handler=MotoRequestHandler
        )
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join()

    def reset_log(self) -> None:
        with self._lock:
            self.requests.clear()

    def log(self) -> list[Request]:
        with self._lock:
            return list(self.requests)

    def storage_options(self) -> dict[str, Any]:
        """s3fs options that reach this server."""
        return {
            "endpoint_url": self.endpoint_url,
            "key": "test",
            "secret": "test",
            "client_kwargs": {"region_name": REGION},
        }


@dataclass(frozen=True)
class S3Bucket:
    """A bucket on the test server."""

    name: str
    server: MotoS3Server
    storage_options: dict[str, Any]

    def url(self, key: str = "") -> str:
        """``s3://<bucket>/<key>``."""
        return f"s3://{self.name}/{key}".rstrip("/")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoS3Server]:
    """One moto S3 server for the whole session."""
    pytest.importorskip("moto", reason="the S3 tests need moto[server] (test extra)")
    server = MotoS3Server()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: MotoS3Server, monkeypatch: pytest.MonkeyPatch) -> S3Bucket:
    """A new empty bucket; ``storage_options`` for s3fs; no real AWS settings leak in."""
    s3fs = pytest.importorskip("s3fs")
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    options = s3_server.storage_options()
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(**options).mkdir(name)
    return S3Bucket(name, s3_server, options)
