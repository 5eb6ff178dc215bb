"""Workers, pool aliases, selection, health and the model-server clients. Imports no other app."""
