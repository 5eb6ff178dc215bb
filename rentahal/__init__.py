"""Shared plumbing: settings, ASGI and URL wiring, the shard router, RQ queues, metrics."""
