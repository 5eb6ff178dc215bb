"""Realms: which realm serves each query type, per-realm queues, the /ws consumer and the query job.
May import pools and accounts, and is the app that runs the whole broker (run_broker)."""
