"""qmailsqld: listening, the event loop and connection state, the command table,
the workers. Imports qmailsql.core only."""
