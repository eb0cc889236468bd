"""`qmailsql quota set` and `qmailsql quota`: the administrator's side of the
Maildir++ quotas (qmailsql/core/quota.py has the limits, maildirsize and the daemon's
answers): set a mailbox's or a domain's limits, and report usage against them."""
import os
from dataclasses import dataclass

from qmailsql.core.quota import (QuotaError, all_limits, domain_members, format_size, over,
                                 percent, usage)


QUOTA_HELP = """\
Maildir++ quotas, kept in the DB and enforced by the qmail-local wrapper.

  qmailsql quota set USER [--size 500M] [--count N]
  qmailsql quota set @DOMAIN [--size 2G] [--count N]     default for a virtual domain
  qmailsql quota [USER...] [--json]                      usage against the limits

Sizes are bytes, or a number with K, M, G, T (powers of 1024). `--size none` removes
the mailbox's own limit (the domain default applies again), `--size unlimited` (or 0)
means no limit even where the domain has one. Usage is read from each
HOME/Maildir/maildirsize (counted afresh where a delivery would recalculate it);
without USER every mailbox that has a limit is shown, largest first, then the
domains. Over quota, mail is bounced (#5.2.2), or deferred (#4.2.2) with
`quota_overflow defer` in control/sqlserver; `quota_warn_percent` (default 90)
sends the mailbox one warning when it fills up that far.
"""


def _write(directory, sql, params):
    return directory.query(sql, params, write=True)


def set_limits(directory, target, size=False, count=False):
    """Set the limits of a mailbox (`user`) or the default of a domain (`@host`).
    SIZE/COUNT: an int, None (remove) or False (leave as it is). Returns a sentence."""
    if size is False and count is False:
        raise QuotaError("give --size and/or --count")
    target = target.strip()
    if target.startswith("@"):
        host = target[1:].strip().lower()
        if not host or any(c in host for c in " \t\n\0@/"):
            raise QuotaError("domain %r is not a host name" % target)
        row = _write(directory, "SELECT quota_size, quota_count FROM domain_quota "
                     "WHERE host=%s", (host,))
        old = row[0] if row else (None, None)
        new = (old[0] if size is False else size, old[1] if count is False else count)
        if new == (None, None):
            _write(directory, "DELETE FROM domain_quota WHERE host=%s", (host,))
        else:
            _write(directory, "INSERT INTO domain_quota (host, quota_size, quota_count) "
                   "VALUES (%s,%s,%s) ON DUPLICATE KEY UPDATE quota_size=VALUES(quota_size), "
                   "quota_count=VALUES(quota_count)", (host, new[0], new[1]))
        members = _write(directory, "SELECT COUNT(DISTINCT username) FROM virtual "
                         "WHERE virtual_host=%s", (host,))[0][0]
        note = "" if members else " (no virtual rows name that host yet)"
        return "domain default of @%s: %s%s" % (host, describe(*new), note)
    rows = _write(directory, "SELECT username, quota_size, quota_count FROM mailbox "
                  "WHERE username=%s", (target,))
    if not rows:
        raise QuotaError("no mailbox %r (qmailsql mailbox list)" % target)
    name, old_size, old_count = rows[0]
    new = (old_size if size is False else size, old_count if count is False else count)
    _write(directory, "UPDATE mailbox SET quota_size=%s, quota_count=%s WHERE username=%s",
           (new[0], new[1], name))
    return "limits of %s: %s" % (name, describe(*new))


def describe(size, count):
    def one(v, what, fmt):
        if v is None:
            return "no %s limit of its own" % what
        if v == 0:
            return "%s unlimited" % what
        return "%s %s" % (what, fmt(v))
    return "%s, %s" % (one(size, "size", format_size), one(count, "count", str))


@dataclass
class Row:
    user: str
    maildir: str
    bytes: int
    messages: int
    size_limit: int
    count_limit: int
    limit_from: str
    percent: float
    over: bool
    source: str
    error: str


def report(directory, users=None):
    """(mailbox rows, domain rows) for `qmailsql quota`, largest first."""
    rows = []
    limits = all_limits(directory, users)
    if users:
        known = {row[0].lower() for row in limits}
        missing = [u for u in users if u.lower() not in known]
        if missing:
            raise QuotaError("no mailbox %s (qmailsql mailbox list)" % ", ".join(
                repr(u) for u in missing))
    for name, _, _, home, lim in limits:
        u = usage(home, lim)
        rows.append(Row(name, os.path.join(home, "Maildir"), u.bytes, u.count, lim.size,
                        lim.count, lim.source, round(percent(lim, u.bytes, u.count), 1),
                        over(lim, u.bytes, u.count), u.source, u.error))
    rows.sort(key=lambda r: (-r.bytes, -r.messages, r.user))
    defaults = {h.lower(): (s, c) for h, s, c in directory.query(
        "SELECT host, quota_size, quota_count FROM domain_quota")}
    by_user = {r.user.lower(): r for r in rows}
    domains = []
    for host, members in sorted(domain_members(directory).items()):
        mine = [by_user[m] for m in members if m in by_user]
        if not mine and host not in defaults:
            continue
        size, count = defaults.get(host, (None, None))
        domains.append({"domain": host, "mailboxes": len(mine),
                        "bytes": sum(r.bytes for r in mine),
                        "messages": sum(r.messages for r in mine),
                        "default_size": size, "default_count": count,
                        "over_quota": sum(1 for r in mine if r.over)})
    for host in sorted(set(defaults) - {d["domain"] for d in domains}):
        size, count = defaults[host]
        domains.append({"domain": host, "mailboxes": 0, "bytes": 0, "messages": 0,
                        "default_size": size, "default_count": count, "over_quota": 0})
    domains.sort(key=lambda d: (-d["bytes"], d["domain"]))
    return rows, domains


def _limit_text(used, limit, fmt):
    return "%s/%s" % (fmt(used), fmt(limit) if limit else "-")


def format_report(rows, domains):
    """The table `qmailsql quota` prints (text)."""
    lines = []
    w = max([len("mailbox")] + [len(r.user) for r in rows])
    f = max([len("limit from")] + [len(r.limit_from) for r in rows])
    lines.append("%-*s  %15s  %15s  %6s  %-*s  %s\n" % (w, "mailbox", "size", "messages", "use",
                                                  f, "limit from", "usage from"))
    for r in rows:
        flag = " OVER QUOTA" if r.over else ""
        lines.append("%-*s  %15s  %15s  %5.1f%%  %-*s  %s%s\n" % (
            w, r.user, _limit_text(r.bytes, r.size_limit, format_size),
            _limit_text(r.messages, r.count_limit, str), r.percent, f, r.limit_from or "-",
            r.source + (" [%s]" % r.error if r.error else ""), flag))
    if domains:
        lines.append("\n%-30s  %9s  %10s  %10s  %13s  %s\n" % (
            "domain", "mailboxes", "size", "messages", "default size", "default count"))
        for d in domains:
            lines.append("%-30s  %9d  %10s  %10d  %13s  %s\n" % (
                d["domain"], d["mailboxes"], format_size(d["bytes"]), d["messages"],
                format_size(d["default_size"]) if d["default_size"] is not None else "-",
                d["default_count"] if d["default_count"] is not None else "-"))
    return "".join(lines)

