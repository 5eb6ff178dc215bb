"""Every write to accounts' rows, by noun: `users` (users, nicknames, bans) and `queries`."""
