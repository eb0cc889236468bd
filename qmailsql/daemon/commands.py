"""The daemon's commands (csrc/PROTOCOL.md): one table says, for each, how many
request fields it takes, who may ask, which pool answers it, how its answers are
looked up in the cache, and which fields have a length bound. The loop's dispatch
(hotpath.Dispatcher, core/_hot.pyx) and the workers (Worker.handle) only look things
up here."""
from collections import namedtuple

LOCAL_FIELDS = ("user", "homedir", "local part", "dash", "ext", "domain")

# nargs: the field counts accepted (the last one is the one asked for in messages);
# who: "privileged" (the client uid list only), "open" (anyone; `local` checks the
#   account in the worker) or "dovecot" (also Dovecot's user, dovecot_uids());
# pool: "inline" (the loop answers), "db" (DB workers) or "auth" (password hashes:
#   the auth workers' queue, so slow hashes never delay deliveries);
# cache: how an unprivileged peer's request is looked up (privileged peers' requests
#   are always looked up first, by their payload): None (not at all), "shared" (the
#   same answer as anyone's), "per-uid" (checked for this very uid: the key has the
#   uid in front, hotpath.local_cache_key) or "stale" (getpw: a stale answer is kept
#   ready for a DB failure);
# fields: names of the fields with a length bound (resolve.MAX_FIELD; homedir:
#   server.MAX_HOMEDIR);
# handler: the method that answers it (pool "inline": the Daemon's, else the Worker's).
Command = namedtuple("Command", "name nargs who pool cache fields handler")

TABLE = {c.name: c for c in [
    Command(b"getpw", (1,), "privileged", "db", "stale", ("local part",), "getpw"),
    Command(b"local", (6,), "open", "db", "per-uid", LOCAL_FIELDS, "local"),
    # `localq` is `local` with the mailbox's quota in front of the lines
    Command(b"localq", (6,), "open", "db", "per-uid", LOCAL_FIELDS, "local"),
    Command(b"local-confirm", (6,), "open", "db", None, LOCAL_FIELDS, "local_confirm"),
    # a 4th field, the service, is optional, so a checkpassword built before
    # service bars keeps working
    Command(b"auth", (3, 4), "privileged", "auth", None, (), "auth"),
    Command(b"passdb", (4,), "dovecot", "auth", None, (), "dovecot_request"),
    Command(b"userdb", (1,), "dovecot", "db", "shared", ("user",), "dovecot_request"),
    Command(b"iterate", (1,), "dovecot", "db", None, (), "dovecot_request"),
    Command(b"ping", (0,), "open", "inline", None, (), "ping"),
    Command(b"flush", (0,), "privileged", "inline", None, (), "flush"),
]}

# what a peer not in the client uid list may send; and Dovecot's auth user
OPEN_COMMANDS = frozenset(n for n, c in TABLE.items() if c.who == "open")
DOVECOT_PEER_COMMANDS = OPEN_COMMANDS | frozenset(
    n for n, c in TABLE.items() if c.who == "dovecot")
