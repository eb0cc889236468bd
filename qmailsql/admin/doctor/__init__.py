"""`qmailsql doctor`: every pitfall of the qmail-mysql FAQ, found and explained (SPEC 7).

Each finding is a Finding(check, severity, what, fix): one line saying what is wrong,
one line saying how to fix it (the exact command or SQL where there is one). The
checks, by the name they report under:

  sqlserver-missing / -unreadable / -world-readable / -invalid
                        control/sqlserver (FAQ: "alert: out of memory", "insecure")
  db-unreachable / db-login-refused
                        each `server` (and the write_server) connected to separately
  schema-missing-table / schema-missing-column / schema-userlen / schema-index-missing
                        tables, columns, username columns narrower than `userlen`, the
                        indexes the lookups need
  mailbox-misconfigured, uid-zero, username-case, username-too-long, password-type
  home-missing / home-owner / home-group / home-writable / home-sticky
  maildir-missing / maildir-owner / path-not-searchable
                        FAQ: "prints alias although the user is in mailbox" and POP3's
                        "this user has no $HOME/Maildir": every directory from / down
                        to home/Maildir must be searchable by the row's uid/gid
  alias-blank / alias-misconfigured
                        rows that would eat or defer mail
  alias-shadowed        rows whose delivery the qmail-local wrapper defers: a dot-qmail
                        file stock qmail-local would read instead of them
  virtual-funky-catchall, virtual-forward-loop, virtual-forward-user,
  virtual-blank-username, virtual-pattern, virtual-target-missing
  control-stale         virtualdomains / rcpthosts / morercpthosts(.cdb) vs what
                        `qmailsql sync` would write (sync.plan), compared line by line
  control-locals        a virtual host also in control/locals (qmail-send reads locals
                        first: u@host goes to the local user u)
  users-cdb-shadow      QMAIL/users/cdb (or users/assign) entries that qmail-lspawn
                        consults before qmail-getpw, hiding DB mailboxes
  users-cdb-bypass      entries whose account is not the DB's although the DB has rows
                        or a mailbox for that name: delivered as stock, rows skipped
  helper-missing / helper-outdated / helper-overwritten / qmail-local-orig
  helper-qmail-dir      helpers built (conf-qmail) for another qmail home
  daemon-not-running / daemon-not-answering
  alias-user-missing
  doctor-no-access      a path the doctor itself (run as this uid) may not examine: the
                        checks needing it were skipped; every probe ends in a finding,
                        never in a traceback
  quota-over / quota-maildirsize-unreadable / schema-quota
                        Maildir++ quotas (qmailsql/core/quota.py)

Each area is a module of this package (sqlserver, daemon, helpers, database, rows,
homes, control, quota); every check takes a Context and the facts it needs as arguments, and
returns what later checks need, so none depends on another's side effects; run()
below is the one place that orders them.

Speed: each table is read ONCE, streamed with a server-side cursor (SSCursor) on a
connection of its own; every path is stat()ed once (a bounded cache), and the
searchability of a home's parents is computed once per (parent, uid, gid).
Findings of one kind are capped (`limit`, default 20 shown; the counts are exact).
"""
import time

import MySQLdb

from qmailsql.core import db

from . import control, daemon, database, helpers, quota, rows, sqlserver
from .common import Context, passwd_exists
from .homes import Homes
from .report import Finding, Progress, Report

__all__ = ["Doctor", "Finding", "Progress", "Report", "run", "passwd_exists"]


class Doctor:
    """One run of every check against QMAIL_DIR: Doctor(...).run() -> Report."""

    def __init__(self, qmail_dir=None, limit=20, progress=None):
        self.report = Report(limit)
        self.ctx = Context(qmail_dir, self.report,
                           progress if progress is not None else Progress())
        self.qmail_dir = self.ctx.qmail_dir

    def run(self):
        ctx = self.ctx
        started = time.monotonic()
        try:
            found = ctx.guarded(sqlserver.check_sqlserver) or sqlserver.Sqlserver()
            daemon_cred = ctx.guarded(daemon.check_daemon)
            ctx.guarded(sqlserver.check_readable_by_daemon, found.stat, daemon_cred)
            ctx.guarded(helpers.check_helpers)
            if found.config is not None and ctx.guarded(database.check_servers, found.config):
                ctx.guarded(check_database, found.config)
        finally:
            ctx.progress.done()
            self.report.elapsed = time.monotonic() - started
        return self.report


def check_database(ctx, cfg):
    """The schema, then every table streamed once (scan_tables)."""
    tables = database.Tables(ctx, cfg)
    try:
        try:
            found = tables.read_schema()
        except Exception as e:  # DirectoryUnavailable or a server error
            ctx.add("db-unreachable", "error", "cannot read the schema: %s" % e,
                    "check the DB server and the grants of %r" % cfg.login)
            return
        database.check_schema(ctx, cfg, found, tables.directory)
        try:
            tables.open_stream()
        except MySQLdb.Error as e:
            ctx.add("db-unreachable", "error", "no server answered for the table scan: %s" % e,
                    "check the DB servers (see the db-* findings)")
            return
        try:
            scan_tables(ctx, cfg, tables, found)
        except (MySQLdb.Error, db.DirectoryUnavailable) as e:
            ctx.add("db-unreachable", "error", "the DB failed during the table scan: %s (the "
                    "checks after it did not run)" % (e,),
                    "check the DB server's log, then run qmailsql doctor again")
    finally:
        tables.close()


def scan_tables(ctx, cfg, tables, found):
    columns, estimates = found.columns, found.estimates
    users_table = control.users_table(ctx)
    entry_users = ({e.user.lower() for e in users_table.entries()}
                   if users_table is not None else set())
    vfacts = rows.VirtualFacts()
    if "virtual" in columns:
        vfacts = rows.scan_virtual(ctx, cfg, tables, columns["virtual"],
                                   estimates.get("virtual"))
    afacts = rows.AliasFacts()
    if "alias" in columns:
        afacts = rows.scan_alias(ctx, tables, columns["alias"], estimates.get("alias"),
                                 entry_users)
    mfacts = rows.MailboxFacts()
    if "mailbox" in columns:
        case_sensitive = not (found.collations.get("username") or "_ci").endswith("_ci")
        mfacts = rows.scan_mailbox(ctx, cfg, tables, columns["mailbox"],
                                   estimates.get("mailbox"), Homes(ctx),
                                   users_table=users_table, virtual_targets=vfacts.targets,
                                   alias_levels=afacts.levels, entry_users=entry_users,
                                   case_sensitive=case_sensitive)
        rows.check_alias_user(ctx, cfg, mfacts.alias_found)
        if users_table is not None:
            control.check_bypass(ctx, cfg, users_table, afacts.entry_rows,
                                 mfacts.entry_accounts)
        quota.check_quotas(ctx, cfg, tables.directory)
    rows.check_virtual_targets(ctx, cfg, vfacts.targets, mfacts.targets_found)
    if "virtual" in columns and "rcpthosts" in columns:
        control.check_control_files(ctx, tables.directory)
    if "virtual" in columns:
        control.check_locals(ctx, vfacts.hosts)


def run(qmail_dir=None, limit=20, progress=None):
    """Run every check; a Report (findings, counts, rows scanned, elapsed)."""
    return Doctor(qmail_dir, limit=limit, progress=progress).run()
