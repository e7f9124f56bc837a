"""Prefect flows over the ``pipeline`` library: scheduling, retries, caching, artifacts."""
