"""qmailsqld: the process (run), listening, the event loop (server) and connection
state (conn), the command table, the workers. Imports qmailsql.core only."""
