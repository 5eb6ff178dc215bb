"""The chaos suite: the whole broker on stores of its own, driven over /ws by many users while
workers are killed, Redis and Postgres restart, a shard moves and one user floods; then every
promise of the query path is checked in SQL and against the clients' logs (README, "Chaos suite")."""
