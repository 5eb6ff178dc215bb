"""Federation between brokers: identity and keys, peers, signed requests, routing to peers,
settlement and discovery. May import pools, accounts and realms; none of them imports it."""
