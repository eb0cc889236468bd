"""Homes and Maildirs (FAQ: "prints alias although the user is in mailbox", POP3's "this
user has no $HOME/Maildir"): exist, owned by the row's uid/gid, not world-writable nor
sticky, and every directory from / down to home/Maildir searchable by that uid/gid."""
import errno
import os
import stat

from .common import STAT_CACHE_MAX, can, grant_fix, group_name, mode, parents, q, sql_str, user_name


class Homes:
    """The home checks of one run: every path stat()ed once (a bounded cache), the
    searchability of a home's parents computed once per (parent, uid, gid), and the
    path-not-searchable findings gathered per blocking directory until flush()."""

    def __init__(self, ctx):
        self.ctx = ctx
        self._stat = {}
        self._search = {}
        self._blocked = {}
        self._ok = set()

    def check(self, name, uid, gid, home):
        """check_home once per (home, uid, gid) that was fine."""
        key = (home, uid, gid)
        if key in self._ok:
            return True
        if self.check_home(name, uid, gid, home):
            if len(self._ok) >= STAT_CACHE_MAX:
                self._ok.clear()
            self._ok.add(key)
            return True
        return False

    def _st(self, path):
        """stat(PATH) once (a bounded cache); an OSError instance when it fails."""
        try:
            return self._stat[path]
        except KeyError:
            pass
        try:
            st = os.stat(path)
        except OSError as e:
            st = e
        if len(self._stat) >= STAT_CACHE_MAX:
            self._stat.clear()
        self._stat[path] = st
        return st

    def check_home(self, name, uid, gid, home):
        """Check one row's home; True when nothing was wrong."""
        before = self.ctx.report.total
        st = self._st(home)
        owner = "%d:%d" % (uid, gid)
        if isinstance(st, OSError):
            if st.errno in (errno.ENOENT, errno.ENOTDIR):
                self.ctx.add("home-missing", "error",
                         "mailbox %r: home %s does not exist: qmail-getpw skips the user and "
                         "the mail goes to the alias user" % (name, home),
                         "mkdir -p %s && maildirmake %s/Maildir && chown -R %s %s"
                         % (q(home), q(home), owner, q(home)))
            else:
                self.ctx.add("home-missing", "error", "mailbox %r: cannot stat home %s: %s"
                         % (name, home, st.strerror), "check the file system holding %s" % home)
            return False
        if not stat.S_ISDIR(st.st_mode):
            self.ctx.add("home-missing", "error", "mailbox %r: home %s is not a directory"
                     % (name, home), "mv %s %s.old && mkdir %s && chown %s %s"
                     % (q(home), q(home), q(home), owner, q(home)))
            return False
        if st.st_uid != uid:
            self.ctx.add("home-owner", "error",
                     "mailbox %r: home %s is owned by uid %d, not the row's uid %d: "
                     "qmail-getpw skips the user and prints the alias user (FAQ)"
                     % (name, home, st.st_uid, uid),
                     "chown -R %s %s   (or UPDATE mailbox SET uid=%d, gid=%d WHERE username=%s;)"
                     % (owner, q(home), st.st_uid, st.st_gid, sql_str(name)))
        elif st.st_gid != gid:
            self.ctx.add("home-group", "warning",
                     "mailbox %r: home %s has group %d, not the row's gid %d" % (
                         name, home, st.st_gid, gid),
                     "chgrp -R %d %s   (or UPDATE mailbox SET gid=%d WHERE username=%s;)"
                     % (gid, q(home), st.st_gid, sql_str(name)))
        if st.st_mode & stat.S_IWOTH:
            self.ctx.add("home-writable", "error",
                     "mailbox %r: home %s is world-writable (%s): qmail-local defers every "
                     "delivery (\"Uh-oh: home directory is writable\")" % (name, home, mode(st)),
                     "chmod o-w %s" % q(home))
        if st.st_mode & stat.S_ISVTX:
            self.ctx.add("home-sticky", "warning",
                     "mailbox %r: home %s has the sticky bit: qmail-local defers deliveries "
                     "(\"user is editing his .qmail file\")" % (name, home),
                     "chmod -t %s" % q(home))
        gids = (gid,)
        # every directory above home, computed once per (parent, uid, gid)
        parent = home.rstrip("/").rpartition("/")[0] or "/"
        key = (parent, uid, gid)
        blocked = self._search.get(key, False)
        if blocked is False:
            blocked = None
            for d in parents(home.rstrip("/") or "/"):
                dst = self._st(d)
                if isinstance(dst, OSError):
                    break
                if not can(dst, uid, gids, 1):
                    blocked = d
                    break
            if len(self._search) >= STAT_CACHE_MAX:
                self._search.clear()
            self._search[key] = blocked
        if blocked is None and not can(st, uid, gids, 1):
            blocked = home
        maildir = home.rstrip("/") + "/Maildir"
        mst = self._st(maildir)
        if blocked is None:
            if isinstance(mst, OSError):
                if mst.errno == errno.ENOENT:
                    self.ctx.add("maildir-missing", "warning",
                             "mailbox %r: %s does not exist: POP3 says \"this user has no "
                             "$HOME/Maildir\" (fine only if the user's .qmail or alias rows "
                             "deliver elsewhere)" % (name, maildir),
                             "maildirmake %s && chown -R %s %s" % (q(maildir), owner,
                                                                  q(maildir)))
                return False
            if not stat.S_ISDIR(mst.st_mode):
                return self.ctx.report.total == before  # an mbox called Maildir
            if mst.st_uid != uid:
                self.ctx.add("maildir-owner", "error",
                         "mailbox %r: %s is owned by uid %d, not %d: deliveries and POP3 fail"
                         % (name, maildir, mst.st_uid, uid),
                         "chown -R %s %s" % (owner, q(maildir)))
                return False
            if not can(mst, uid, gids, 1):
                blocked = maildir
        if blocked is not None:
            agg = self._blocked.setdefault(blocked, [0, name, uid, gid])
            agg[0] += 1
            return False
        return self.ctx.report.total == before

    def flush(self):
        for path, (n, name, uid, gid) in sorted(self._blocked.items()):
            st = self._st(path)
            if isinstance(st, OSError):
                continue
            more = (" and %d more mailbox%s" % (n - 1, "es" if n > 2 else "")) if n > 1 else ""
            self.ctx.add("path-not-searchable", "error",
                     "%s (%s %s:%s) is not searchable by uid %d gid %d (mailbox %r%s): POP3 "
                     "says \"this user has no $HOME/Maildir\" and deliveries fail"
                     % (path, mode(st), user_name(st.st_uid), group_name(st.st_gid), uid, gid, name,
                        more),
                     grant_fix(path, st, uid, (gid,), "x"))
        self._blocked = {}
