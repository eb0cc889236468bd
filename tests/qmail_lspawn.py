"""qmail-lspawn and qmail-send as far as a delivery's report goes, for tests.

Follows notqmail's qmail-lspawn.c (nughde_get, spawn, report) and qmail-send.c (the
"delivery N: deferral: ..." line, logsafe) step by step; users/cdb is not consulted.

qmail-start closes qmail-lspawn's fd 2. qmail-lspawn then opens the message with
open_read(), which lands on that free fd 2, so qmail-getpw runs with fd 2 either
closed or holding the message read-only (FD2_CLOSED, FD2_MESSAGE), its stdout a pipe
qmail-lspawn slurps, as uid qmailp and gid nofiles. qmail-local runs as the uid/gid
of the answer with fd 0 the message and fds 1 and 2 the report pipe.
"""
import os
import subprocess

QLX_USAGE, QLX_ROOT, QLX_NFS, QLX_NOALIAS, QLX_SYS = 112, 113, 115, 116, 118
QLX_EXECHARD, QLX_EXECSOFT, QLX_EXECPW = 126, 120, 121
FIXED_REPORTS = {
    QLX_USAGE: b"ZInternal qmail-lspawn bug.\n",
    QLX_ROOT: b"ZNot allowed to perform deliveries as root.\n",
    QLX_NFS: b"ZNFS failure in qmail-local.\n",
    QLX_NOALIAS: b"ZUnable to find alias user!\n",
    QLX_SYS: b"ZTemporary failure in qmail-lspawn.\n",
    QLX_EXECSOFT: b"ZUnable to run qmail-local.\n",
    QLX_EXECHARD: b"DUnable to run qmail-local.\n",
    QLX_EXECPW: b"ZUnable to run qmail-getpw.\n",
    117: b"ZTrouble reading users/cdb in qmail-lspawn.\n",
    119: b"ZOut of memory in qmail-lspawn.\n",
}
FD2_CLOSED, FD2_MESSAGE = "closed", "message"


class Delivery:
    """What happened: NUGHDE (getpw's raw stdout), LOCAL_ARGV (None if qmail-local
    never ran), WSTAT-like CODE of qmail-lspawn's child and REPORT (what qmail-send
    reads: the status letter and the text up to the first NUL)."""

    def __init__(self, nughde, local_argv, code, report):
        self.nughde, self.local_argv, self.code, self.report = nughde, local_argv, code, report

    def log_line(self, delnum=1):
        """qmail-send's log line for this report."""
        kind = {b"K": "success", b"Z": "deferral", b"D": "failure"}.get(self.report[:1])
        return "delivery %d: %s: %s" % (delnum, kind, logsafe(self.report[1:]))


def logsafe(text):
    """qmail-send's logsafe(): newline -> '/', '%' and bytes outside 33..126 -> '_'."""
    return "".join("/" if b == 10 else "_" if b == 37 or not 33 <= b <= 126 else chr(b)
                   for b in text)


def report(code, output):
    """qmail-lspawn's report() for a child exit CODE (None: crashed) and its OUTPUT."""
    if code is None:
        return b"Zqmail-local crashed.\n"
    if code in FIXED_REPORTS:
        return FIXED_REPORTS[code]
    letter = b"Z" if code in (111, 71, 74, 75) else b"K" if code == 0 else b"D"
    return letter + output.split(b"\0")[0]


def scan_ulong(text):
    """qmail's scan_ulong(): the leading decimal digits (0 when there are none)."""
    digits = b""
    for b in text:
        if not 48 <= b <= 57:
            break
        digits += bytes([b])
    return int(digits or b"0")


def _as(uid, gid, fd2=None):
    def drop():
        if fd2 == FD2_CLOSED:
            os.close(2)
        elif fd2 is not None:
            os.dup2(fd2, 2)
        os.setgroups([gid])  # prot_gid: setgroups(1, &gid), then setgid
        os.setgid(gid)
        os.setuid(uid)
    return drop


def _code(returncode):
    return None if returncode < 0 else returncode


def deliver(qmail_dir, local, domain, env, qmailp_uid, nofiles_gid, message,
            fd2=FD2_CLOSED, sender="sender@example.net", aliasempty="./Maildir/",
            timeout=120):
    """One local delivery of the file MESSAGE to LOCAL@DOMAIN, as qmail-lspawn does it,
    with the programs in QMAIL_DIR/bin and environment ENV. Returns a Delivery."""
    with open(message, "rb") as msg:
        fd2_arg = msg.fileno() if fd2 == FD2_MESSAGE else fd2
        getpw = subprocess.run(["bin/qmail-getpw", local], cwd=qmail_dir, env=env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, pass_fds=(),
                               preexec_fn=_as(qmailp_uid, nofiles_gid, fd2_arg),
                               timeout=timeout)
    nughde = getpw.stdout
    code = _code(getpw.returncode)
    if code is None:
        return Delivery(nughde, None, QLX_SYS, report(QLX_SYS, b""))
    if code != 0:
        return Delivery(nughde, None, code, report(code, b""))
    fields = nughde.split(b"\0")
    if len(fields) < 7:  # spawn(): fewer than six NULs is QLX_USAGE
        return Delivery(nughde, None, QLX_USAGE, report(QLX_USAGE, b""))
    user, uid, gid, home, dash, ext = fields[:6]
    argv = [b"bin/qmail-local", b"--", user, home, local.encode(), dash, ext,
            domain.encode(), sender.encode(), aliasempty.encode()]
    uid, gid = scan_ulong(uid), scan_ulong(gid)
    if uid == 0:  # prot_uid(0), then `if (!getuid()) _exit(QLX_ROOT)`
        return Delivery(nughde, None, QLX_ROOT, report(QLX_ROOT, b""))
    with open(message, "rb") as msg:  # fd 1 and fd 2: one pipe, as fd_copy(2,1)
        local = subprocess.run(argv, cwd=qmail_dir, env=env, stdin=msg,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               preexec_fn=_as(uid, gid), timeout=timeout)
    output, code = local.stdout, _code(local.returncode)
    return Delivery(nughde, argv, code, report(code, output))
