"""Where qmail lives, what control/sqlserver says, and who the administrator is (SPEC 2)."""
import dataclasses
import os
import pwd
import stat
from dataclasses import dataclass, field
from pathlib import Path

from qmailsql.core.helpers import PACKAGE_DIR
from qmailsql.core.definitions import ConfigError
from qmailsql.core.hotpath import parse_sqlserver

DEFAULT_QMAIL_DIR = "/var/qmail"
FIX_PERMS = "chgrp qmailsql {path}; chmod 640 {path}"
DEFAULTS_FILE_ENV = "QMAILSQL_DEFAULTS_FILE"
ADMIN_GROUP = "qmailsql"  # option-file group read besides [client] for the admin login
SANDBOX_MARKER = ".qmailsql-sandbox"  # in the root of a qmailsql.sandbox host


def compiled_qmail_dir():
    """conf-qmail as it was when the package was built."""
    try:
        text = (PACKAGE_DIR / "conf-qmail").read_text()
        line = text.split("\n")[0].strip()
        if line.startswith("/"):
            return line
    except OSError:
        pass
    return DEFAULT_QMAIL_DIR


def qmail_dir(override=None):
    """--qmail-dir, else $QMAILSQL_QMAIL_DIR, else conf-qmail."""
    return override or os.environ.get("QMAILSQL_QMAIL_DIR") or compiled_qmail_dir()


def socket_path(qmail_home):
    """Where qmailsqld listens: $QMAILSQL_SOCKET, else QMAIL/qmailsql/qmailsqld.sock."""
    return os.environ.get("QMAILSQL_SOCKET") or os.path.join(qmail_home, "qmailsql",
                                                            "qmailsqld.sock")


@dataclass(frozen=True)
class Server:
    """One DB server: a unix socket path, or host and port."""
    host: str = ""
    port: int = 3306
    socket: str = ""

    def __str__(self):
        return self.socket or ("[%s]:%d" % (self.host, self.port) if ":" in self.host
                               else "%s:%d" % (self.host, self.port))

    def connect_args(self):
        return {"unix_socket": self.socket} if self.socket else {"host": self.host,
                                                                 "port": self.port}


def parse_server(text, default_port, filename="control/sqlserver"):
    text = text.strip()
    if text.startswith("/"):
        return Server(socket=text)
    host, port = text, default_port
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ConfigError(filename, 0, "server %r: missing ']'" % text)
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(filename, 0, "server %r: expected ':port' after ']'" % text)
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host:
        raise ConfigError(filename, 0, "server %r has no host" % text)
    try:
        port = int(port)
        if not 0 < port < 65536:
            raise ValueError
    except ValueError:
        raise ConfigError(filename, 0, "server %r: port must be 1-65535" % text)
    return Server(host=host, port=port)


@dataclass
class Config:
    qmail_dir: str = DEFAULT_QMAIL_DIR
    servers: list = field(default_factory=list)
    write_server: Server = None
    confirm_misses: bool = False  # a `write_server` line: final misses are asked there
    login: str = ""
    password: str = ""
    db: str = "qmail"
    connect_timeout: int = 5
    read_timeout: int = 10
    ssl: dict = field(default_factory=dict)
    auto_break: bytes = b"-"
    userlen: int = 32
    funky_queries: bool = False
    magic_forwarding: bool = False
    system_users: bool = True
    cache_ttl: int = 300
    negative_ttl: int = 10
    stale_ttl: int = 3600
    rehash: bool = False
    default_scheme: str = "sha512-crypt"
    quota_overflow: str = "bounce"   # over quota: bounce (#5.2.2) or defer (#4.2.2)
    quota_warn_percent: int = 90     # warn the mailbox once at this usage; 0: never
    path: str = ""
    # the administrator's login (as_admin): a MariaDB option file instead of login/password
    admin: bool = False
    defaults_file: str = None

    @property
    def socket_path(self):
        return socket_path(self.qmail_dir)


_BOOLS = {"yes": True, "y": True, "true": True, "on": True, "1": True,
          "no": False, "n": False, "false": False, "off": False, "0": False}


def _bool(key, value, filename):
    try:
        return _BOOLS[value.strip().lower()]
    except KeyError:
        raise ConfigError(filename, 0, "%s must be yes or no, not %r" % (key, value))


def _int(key, value, filename, low=0):
    try:
        n = int(value)
    except ValueError:
        n = low - 1
    if n < low:
        raise ConfigError(filename, 0, "%s must be a whole number >= %d, not %r"
                          % (key, low, value))
    return n


def world_readable(st):
    """True when users other than owner and group may read the file of ST."""
    return bool(st.st_mode & stat.S_IROTH)


def read_file(path):
    """(stat, contents) of control/sqlserver, through one descriptor; OSError as raised."""
    with open(path, "rb") as f:
        return os.fstat(f.fileno()), f.read()


def read_password_file(pw_path):
    """(password, stat) from a password_file: the first line of its first 4096 bytes,
    UTF-8. OSError as raised; ValueError for a NUL in the path or a non-UTF-8 password."""
    with open(pw_path, "rb") as f:
        st = os.fstat(f.fileno())
        return f.read(4096).split(b"\n")[0].decode("utf-8"), st


def check_private(path, st):
    """Refuse a credentials file that users other than owner and group can read."""
    if world_readable(st):
        raise ConfigError(str(path), 0, "holds the DB password but is readable by every "
                          "local user; fix: " + FIX_PERMS.format(path=path))


def from_mapping(values, qmail_home=DEFAULT_QMAIL_DIR, filename="control/sqlserver"):
    """Build a Config from parse_sqlserver()'s result (types and defaults checked here)."""
    cfg = Config(qmail_dir=qmail_home, path=filename)
    default_port = _int("port", values.get("port", "3306"), filename, 1)
    servers = []
    if "socket" in values:
        servers.append(Server(socket=values["socket"]))
    for text in values.get("server", []):
        servers.append(parse_server(text, default_port, filename))
    if not servers:
        raise ConfigError(filename, 0, "no `server` (or `socket`) line: say where the DB is")
    # sockets first, otherwise in the order given
    cfg.servers = [s for s in servers if s.socket] + [s for s in servers if not s.socket]
    cfg.write_server = (parse_server(values["write_server"], default_port, filename)
                        if "write_server" in values else servers[0])
    # without a write_server line the servers are peers: no answer is asked twice
    cfg.confirm_misses = "write_server" in values
    cfg.login = values.get("login", "")
    if not cfg.login:
        raise ConfigError(filename, 0, "no `login` line: name the DB user")
    cfg.password = values.get("password", "")
    cfg.db = values.get("db", cfg.db)
    for key in ("connect_timeout", "read_timeout"):
        if key in values:
            setattr(cfg, key, _int(key, values[key], filename, 1))
    for key in ("cache_ttl", "negative_ttl", "stale_ttl"):
        if key in values:
            setattr(cfg, key, _int(key, values[key], filename, 0))
    if "userlen" in values:
        cfg.userlen = _int("userlen", values["userlen"], filename, 2)
    if "auto_break" in values:
        brk = values["auto_break"].encode("utf-8")
        if len(brk) != 1:
            raise ConfigError(filename, 0, "auto_break must be one ASCII character")
        cfg.auto_break = brk
    for key in ("funky_queries", "magic_forwarding", "system_users", "rehash"):
        if key in values:
            setattr(cfg, key, _bool(key, values[key], filename))
    for key in ("ssl_ca", "ssl_cert", "ssl_key"):
        if key in values:
            cfg.ssl[key[4:]] = values[key]
    if "ssl_verify" in values:
        cfg.ssl["verify"] = _bool("ssl_verify", values["ssl_verify"], filename)
    if "default_scheme" in values:
        cfg.default_scheme = values["default_scheme"]
    if "quota_overflow" in values:
        cfg.quota_overflow = values["quota_overflow"].strip().lower()
        if cfg.quota_overflow not in ("bounce", "defer"):
            raise ConfigError(filename, 0, "quota_overflow must be bounce or defer, not %r"
                              % values["quota_overflow"])
    if "quota_warn_percent" in values:
        cfg.quota_warn_percent = _int("quota_warn_percent", values["quota_warn_percent"],
                                      filename, 0)
        if cfg.quota_warn_percent > 100:
            raise ConfigError(filename, 0, "quota_warn_percent must be 0 (no warning) to 100, "
                              "not %r" % values["quota_warn_percent"])
    return cfg


def load(qmail_home=None, path=None):
    """Read QMAIL/control/sqlserver; every problem is a ConfigError that names the file."""
    qmail_home = qmail_dir(qmail_home)
    path = Path(path or os.path.join(qmail_home, "control", "sqlserver"))
    try:
        st, data = read_file(path)
    except FileNotFoundError:
        raise ConfigError(str(path), 0, "missing; create it (see `qmailsql --help` and the "
                          "README) or point --qmail-dir / QMAILSQL_QMAIL_DIR at your qmail")
    except PermissionError:
        raise ConfigError(str(path), 0, "not readable by uid %d; the daemon's user must be "
                          "able to read it (%s)" % (os.getuid(), FIX_PERMS.format(path=path)))
    except OSError as e:
        raise ConfigError(str(path), 0, "cannot read: %s" % e.strerror)
    values = parse_sqlserver(data, str(path))
    if "password" in values:
        check_private(path, st)
    if "password_file" in values:
        if "password" in values:
            raise ConfigError(str(path), 0, "give `password` or `password_file`, not both")
        pw_path = values["password_file"]
        try:
            values["password"], pst = read_password_file(pw_path)
            check_private(pw_path, pst)
        except OSError as e:
            raise ConfigError(pw_path, 0, "password_file cannot be read: %s" % e.strerror)
        except ConfigError:
            raise
        except ValueError:  # a NUL in the path, or a password that is not UTF-8
            raise ConfigError(repr(pw_path), 0, "password_file must be a readable path "
                              "holding a UTF-8 password on its first line")
    return from_mapping(values, qmail_home, str(path))


def admin_option_file(qmail_home):
    """A sandbox's stand-in for the administrator's ~/.my.cnf: DIR/mysql/root.cnf, the
    private server's root login (None when QMAIL_HOME is no sandbox)."""
    cnf = os.path.join(qmail_home, "mysql", "root.cnf")
    if os.path.exists(os.path.join(qmail_home, SANDBOX_MARKER)) and os.path.exists(cnf):
        return cnf
    return None


def admin_defaults_file(qmail_home, override=None):
    """The MariaDB option file holding the administrator's login: OVERRIDE
    (--defaults-file), else $QMAILSQL_DEFAULTS_FILE, else a sandbox's own
    (DIR/mysql/root.cnf), else None: then libmariadb reads MariaDB's usual files
    (/etc/my.cnf, /etc/mysql/my.cnf, ~/.my.cnf; groups [client] and [qmailsql]) and,
    given no user there, logs in as the OS user (Debian's root: unix_socket, no
    password)."""
    path = override or os.environ.get(DEFAULTS_FILE_ENV)
    if not path:
        path = admin_option_file(qmail_home)
    if path:
        try:
            with open(path, "rb"):
                pass
        except OSError as e:  # libmariadb would silently ignore it
            raise ConfigError(path, 0, "the administrator's option file cannot be read: %s; "
                              "give --defaults-file FILE (or $%s), or neither to use "
                              "~/.my.cnf" % (e.strerror, DEFAULTS_FILE_ENV))
    return path or None


def as_admin(cfg, defaults_file=None):
    """CFG with the administrator's login instead of the daemon's (SPEC 2): the same
    servers, write_server, db and TLS, but user and password from a MariaDB option
    file (admin_defaults_file), never from control/sqlserver."""
    return dataclasses.replace(cfg, admin=True, login="", password="",
                               defaults_file=admin_defaults_file(cfg.qmail_dir, defaults_file))


def describe_admin(cfg):
    """Where CFG's administrator login comes from, for messages."""
    if cfg.defaults_file:
        return ("the administrator's login comes from %s (user= and password= under "
                "[client] or [%s])" % (cfg.defaults_file, ADMIN_GROUP))
    try:
        me = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        me = str(os.getuid())
    return ("the administrator's login comes from MariaDB's option files ([client] or [%s] "
            "in ~/.my.cnf or /etc/mysql/my.cnf), else OS user %s over the unix socket; give "
            "--defaults-file FILE or $%s" % (ADMIN_GROUP, me, DEFAULTS_FILE_ENV))
