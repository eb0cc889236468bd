"""The administrator's tools: table commands, sync, install, doctor, importers.
Imports qmailsql.core only; only the API (qmailsql/api.py) and cli.py import it."""
