"""The doctor's findings: Finding, Report (capped per check, exact counts) and Progress."""
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class Finding:
    check: str
    severity: str  # "error" (mail lost, deferred or misdelivered) or "warning"
    what: str
    fix: str


class Report:
    """Findings, capped per check; exact counts; the numbers for the summary line."""

    def __init__(self, limit=20):
        self.limit = limit
        self.findings = []
        self.counts = OrderedDict()
        self.rows = OrderedDict()
        self.elapsed = 0.0
        self.total = 0

    def add(self, check, severity, what, fix):
        self.total += 1
        n = self.counts.get(check, 0)
        self.counts[check] = n + 1
        if self.limit is None or n < self.limit:
            self.findings.append(Finding(check, severity, what, fix))

    def checks(self):
        return set(self.counts)

    def by_check(self, check):
        return [f for f in self.findings if f.check == check]

    def capped(self):
        """Findings, plus one line per check that had more than `limit`."""
        out = list(self.findings)
        if self.limit is not None:
            for check, n in self.counts.items():
                if n > self.limit:
                    out.append(Finding(check, "warning", "... and %d more %s findings not "
                                       "shown" % (n - self.limit, check),
                                       "qmailsql doctor --all  (shows every one)"))
        return out

    @property
    def healthy(self):
        return not self.counts

    def summary(self):
        found = ", ".join("%s %d" % kv for kv in self.counts.items()) or "none"
        rows = " + ".join("%d %s" % (n, t) for t, n in self.rows.items()) or "no"
        total = sum(self.rows.values())
        rate = (" (%.0f rows/s)" % (total / self.elapsed)) if self.elapsed > 0 and total else ""
        return ("doctor: %d finding%s (%s); scanned %s rows in %.2fs%s"
                % (sum(self.counts.values()), "" if sum(self.counts.values()) == 1 else "s",
                   found, rows, self.elapsed, rate))


class Progress:
    """rows done / total and the rate, on stderr, only when stderr is a terminal."""

    def __init__(self, stream=None, enabled=None):
        self.stream = stream or sys.stderr
        if enabled is None:
            try:
                enabled = self.stream.isatty()
            except (AttributeError, ValueError):
                enabled = False
        self.enabled = enabled
        self.last = 0.0
        self.shown = False

    def update(self, what, done, total, started, force=False):
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self.last < 0.2:
            return
        self.last = now
        rate = done / (now - started) if now > started else 0.0
        of = ("/%d" % total) if total else ""
        pct = (" %3d%%" % min(100, done * 100 // total)) if total else ""
        self.stream.write("\r\033[Kdoctor: %s %d%s rows%s, %.0f rows/s" % (what, done, of,
                                                                          pct, rate))
        self.stream.flush()
        self.shown = True

    def done(self):
        if self.enabled and self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.shown = False
