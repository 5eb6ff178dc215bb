"""Realms: which realm serves each query type, per-realm queues, the /ws consumer and the query job."""
