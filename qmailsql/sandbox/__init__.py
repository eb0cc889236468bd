"""Throw-away qmail hosts (private MariaDB + qmailsqld) and the demo.
Imports qmailsql.core and qmailsql.admin; used by tests, bench and `qmailsql demo`."""
