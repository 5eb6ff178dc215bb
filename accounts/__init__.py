"""Users, sysops and bans, queries as billed records, and the charge ledger. Imports no other app."""
