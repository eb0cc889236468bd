"""Maildir++ quotas: mailboxes over their limit, maildirsize files the doctor cannot
read (the rules are qmailsql/core/quota.py's)."""
from qmailsql.core import quota


def check_quotas(ctx, cfg, directory):
    for check, severity, what, fix in quota.doctor_findings(directory, cfg.quota_overflow):
        ctx.add(check, severity, what, fix)
