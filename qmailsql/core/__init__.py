"""The rules: configuration, the DB layer, resolution (getpw, virtual, aliases),
passwords and auth, the hot path. Imports nothing else from qmailsql."""
