"""Federation between brokers: peers, signed requests, discovery."""
