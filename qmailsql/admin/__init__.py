"""The administrator's tools: table commands, sync, install, doctor, importers.
Imports qmailsql.core only; the API (qmailsql/api.py) and qmailsql.sandbox import it."""
