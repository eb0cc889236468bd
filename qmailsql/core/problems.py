"""Problem: what a core check_* function found in a row or file, with its fix (for
`qmailsql doctor` and the problems() lists). Imports nothing."""
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    check: str     # the doctor's check name, e.g. "alias-blank"
    severity: str  # "error" (mail lost, deferred or misdelivered) or "warning"
    what: str
    fix: str

    def __str__(self):
        return "%s; fix: %s" % (self.what, self.fix)


def sql_str(value):
    """VALUE as an SQL string literal, for fix lines a human pastes (never executed)."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "''") + "'"


def blank(value):
    """A column that is NULL or only white space."""
    return value is None or str(value).strip() == ""
