"""Per-account service bars (SPEC section 6): a mailbox can be barred from POP3, IMAP
or SMTP AUTH separately.

The bars live in `mailbox.deny_services`, a SET('pop3','imap','smtp') that is empty
(nothing barred) by default; `qmailsql mailbox set USER --deny pop3,imap` and
`--allow ...` change it. A login names the service it is for: Dovecot tells it
(`imap`, `pop3`, and `smtp` or `submission` for SMTP AUTH), checkpassword learns it
from $QMAILSQL_SERVICE, from $SMTPAUTH (set for qmail-smtpd AUTH patches) or from
running qmail-pop3d (qmail-popup's child). A login whose service is not known is
refused for a mailbox that is barred from anything: when in doubt, no access.
"""

SERVICES = ("pop3", "imap", "smtp")      # the SET's members, in its order
COLUMN = "deny_services"
COLUMN_DDL = "SET('pop3','imap','smtp') NOT NULL DEFAULT ''"
# what a login may call its service -> the bar that applies
NAMES = {"pop3": "pop3", "imap": "imap", "smtp": "smtp", "submission": "smtp"}


def canonical(service):
    """The bar that applies to SERVICE (str or bytes, any case), or "" if none is known."""
    if isinstance(service, (bytes, bytearray)):
        service = bytes(service).decode("ascii", "replace")
    return NAMES.get((service or "").strip().lower(), "")


def parse(text):
    """'pop3,imap' or 'all' -> a set of SERVICES. ValueError names the valid ones."""
    wanted = set()
    for part in str(text).replace(" ", ",").split(","):
        part = part.strip().lower()
        if not part:
            continue
        if part == "all":
            wanted.update(SERVICES)
        elif part in SERVICES:
            wanted.add(part)
        else:
            raise ValueError("unknown service %r: give a comma-separated list of %s, or all"
                             % (part, ", ".join(SERVICES)))
    if not wanted:
        raise ValueError("no service given: give a comma-separated list of %s, or all"
                         % ", ".join(SERVICES))
    return wanted


def stored(value):
    """The column's value (a comma-joined string, a set from the driver, or None) -> set."""
    if value is None:
        return set()
    if isinstance(value, (set, frozenset)):
        parts = value
    else:
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        parts = str(value).split(",")
    return {p.strip().lower() for p in parts if p.strip()}


def column_value(denied):
    """A set of SERVICES -> the SET column's text, in the column's own order."""
    return ",".join(s for s in SERVICES if s in denied)


def barred(denied, service):
    """Whether a login for SERVICE is refused by the mailbox's bars DENIED (stored())."""
    if not denied:
        return False
    bar = canonical(service)
    return bar == "" or bar in denied
