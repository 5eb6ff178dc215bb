"""Shared plumbing: settings, ASGI and URL wiring, the shard router, RQ queues, metrics. Imports no
app, except its wiring (settings, urls, asgi), which names the apps' entry points."""
