"""`qmailsql import`: users from qmail's users/assign, /etc/passwd or vpopmail into the
tables (SPEC sections 3 to 5), one module per source:

  assign.py     users/assign (read by qmailsql.core.users) -> mailbox and alias rows
  passwd.py     /etc/passwd (+ /etc/shadow) accounts -> mailbox rows
  vpopmail.py   vpopmail's tables, from mysqldump.py's reader or the live DB
  plan.py       the Plan every source builds, compare() with the DB, apply(), report()

Every import first builds a Plan (mailbox, alias and virtual rows, plus what could not
be expressed), then compares it with the DB: new rows, rows already there
(unchanged), rows that differ from what is there (conflicts: the DB row is kept unless
replace). A dry run writes nothing; apply() writes it in one transaction through the
write_server, with parameters only. The API (qmailsql.api.Session.import_*) and the
command call these; no command-line code lives here.
"""
# users/assign and users/cdb themselves are core knowledge (the daemon reads users/cdb)
from qmailsql.core.users import AssignEntry, UsersCdb, UsersTable, parse_assign  # noqa: F401
# the doctor's name for core.users.ulong, until it imports qmailsql.core.users itself
from qmailsql.admin.importers.assign import plan_assign  # noqa: F401
from qmailsql.admin.importers.mysqldump import DumpError, parse_dump  # noqa: F401
from qmailsql.admin.importers.passwd import MAX_UID, MIN_UID  # noqa: F401
from qmailsql.admin.importers.plan import (ImportError_, Outcome, Plan, apply,  # noqa: F401
                                          compare, read_file, report)
from qmailsql.admin.importers.vpopmail import (db_connection, plan_vpopmail, read_db,  # noqa: F401
                                              read_dump, read_vpopmail_mysql)
