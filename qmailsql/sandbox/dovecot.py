"""A private Dovecot for the tests and benchmarks: its own dovecot.conf, base_dir,
state and log, on 127.0.0.1 ports, never touching a system Dovecot."""
import os
import socket
import subprocess
import time


# ---------------------------------------------------------------- a private Dovecot

DOVECOT = "/usr/sbin/dovecot"

PRIVATE_CONF = """\
# a private Dovecot (qmailsql.sandbox.dovecot.Private): its own base_dir, state and log
base_dir = {top}/run
state_dir = {top}/state
instance_name = qmailsql-{port}
log_path = {top}/dovecot.log
protocols = {protocols}
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
auth_verbose = yes
default_internal_user = {internal_user}
# no auth penalty (Dovecot's growing delay per failing address): qmailsqld's
# failed-login limiter is what the tests measure, and the benchmarks want no delays
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
{listeners}
{body}
"""

LISTENER = """\
service {protocol}-login {{
  inet_listener {protocol} {{
    address = 127.0.0.1
    port = {port}
  }}
}}
"""


# the old way in, kept for comparison (tests/test_pop3_e2e.py, bench/dovecot_login.py):
# Dovecot's checkpassword passdb running qmailsql-checkpassword, which changes uid
# before Dovecot's checkpassword-reply runs, so auth must be root, with INSECURE_SETUID
CHECKPASSWORD_RECIPE = """\
mail_location = maildir:~/Maildir
import_environment = TZ INSECURE_SETUID=1 QMAILSQL_SOCKET={socket}
service auth {{
  user = root
}}
passdb {{
  driver = checkpassword
  args = {checkpassword}
}}
userdb {{
  driver = prefetch
}}
"""


class DovecotMissing(Exception):
    pass


class Private:
    """A Dovecot of its own in directory TOP (short, searchable by every uid): its own
    dovecot.conf, base_dir, state_dir and log, listening on 127.0.0.1 ports, never
    touching a system Dovecot. BODY is the auth part of the configuration (a
    passdb/userdb recipe, or `!include` of the dovecot-config fragment); INTERNAL_USER
    is the unprivileged user its auth processes run as. Needs root (Dovecot's master
    changes uids)."""

    def __init__(self, top, body, ports, internal_user="dovecot"):
        for prog in (DOVECOT, "/usr/bin/doveadm"):
            if not os.access(prog, os.X_OK):
                raise DovecotMissing("Dovecot's %s is missing: apt-get install dovecot-core "
                                     "dovecot-imapd dovecot-pop3d dovecot-auth-lua lua-socket "
                                     "(bash .ci/setup does)" % prog)
        self.top = str(top)
        self.ports = dict(ports)  # {"imap": port, "pop3": port}
        self.conf = os.path.join(self.top, "dovecot.conf")
        self.log_path = os.path.join(self.top, "dovecot.log")
        self.proc = None
        listeners = "".join(LISTENER.format(protocol=p, port=n) for p, n in self.ports.items())
        with open(self.conf, "w") as f:
            f.write(PRIVATE_CONF.format(top=self.top, port=min(self.ports.values()),
                                        protocols=" ".join(self.ports), listeners=listeners,
                                        body=body, internal_user=internal_user))

    def start(self, timeout=30.0):
        out = open(self.log_path + ".out", "ab")
        self.proc = subprocess.Popen([DOVECOT, "-F", "-c", self.conf], stdin=subprocess.DEVNULL,
                                     stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        out.close()
        deadline = time.monotonic() + timeout
        for port in self.ports.values():
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError("dovecot exited with %s:\n%s" % (self.proc.returncode,
                                                                       self.log()))
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError("dovecot did not listen on 127.0.0.1:%d within "
                                           "%.0fs:\n%s" % (port, timeout, self.log()))
                    time.sleep(0.05)
        return self

    def doveadm(self, *args, timeout=60):
        return subprocess.run(["/usr/bin/doveadm", "-c", self.conf] + list(args),
                              capture_output=True, text=True, timeout=timeout)

    def log(self, limit=20000):
        """The end of what Dovecot logged (LIMIT characters; None: all of it)."""
        text = ""
        for path in (self.log_path + ".out", self.log_path):
            try:
                with open(path, "rb") as f:
                    text += f.read().decode("utf-8", "replace")
            except OSError:
                pass
        return text if limit is None else text[-limit:]

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(10)
