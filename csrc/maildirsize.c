/* maildirsize.c: Maildir++ quota accounting for the qmail-local wrapper.
 * The rules are written out in qmailsql/quota.py; this is the same thing in C. */
#define _GNU_SOURCE
#include "maildirsize.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

const char *mds_failed = "";

static char where[4096];

/* where = a "/" b; -1 (ENAMETOOLONG) when it does not fit */
static int join(char *buf, size_t size, const char *a, const char *b)
{
  int n = snprintf(buf, size, "%s/%s", a, b);
  if (n < 0 || (size_t)n >= size) { errno = ENAMETOOLONG; return -1; }
  return 0;
}

static int fail(const char *path)
{
  int e = errno;
  snprintf(where, sizeof where, "%s", path);
  mds_failed = where;
  errno = e;
  return -1;
}

/* ---- lock ---- */

static void on_alarm(int sig) { (void)sig; }

int mds_lock(const char *maildir, unsigned seconds)
{
  char path[4096];
  struct sigaction sa;
  int fd, r;

  if (join(path, sizeof path, maildir, ".qmailsql.lock") == -1) return fail(maildir);
  fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd == -1) return fail(path);
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_alarm;   /* no SA_RESTART: flock() returns EINTR at the alarm */
  sigemptyset(&sa.sa_mask);
  sigaction(SIGALRM, &sa, 0);
  alarm(seconds);
  r = flock(fd, LOCK_EX);
  alarm(0);
  if (r == -1) { fail(path); close(fd); return -1; }
  return 0;   /* fd stays open: the lock lasts until exit */
}

/* ---- reading ---- */

/* digits with an optional '-', at most 18 of them; advances *p */
static int number(const char **p, const char *end, long long *v)
{
  const char *s = *p;
  int neg = 0, n = 0;
  long long x = 0;

  if (s < end && *s == '-') { neg = 1; s++; }
  while (s < end && *s >= '0' && *s <= '9') {
    if (++n > 18) return -1;
    x = x * 10 + (*s++ - '0');
  }
  if (!n) return -1;
  *v = neg ? -x : x;
  *p = s;
  return 0;
}

static const char *blanks(const char *s, const char *end)
{
  while (s < end && (*s == ' ' || *s == '\t')) s++;
  return s;
}

/* the quota line: comma-separated NS / NC; other parts are ignored (Courier) */
static void quota_line(const char *s, const char *end, long long *bytes, long long *count)
{
  *bytes = *count = 0;
  while (s < end) {
    long long v;
    const char *p = blanks(s, end);
    if (number(&p, end, &v) == 0 && v >= 0 && p < end) {
      if (*p == 'S') *bytes = v;
      else if (*p == 'C') *count = v;
    }
    while (s < end && *s != ',') s++;
    if (s < end) s++;
  }
}

/* 1: usable (m->bytes, m->count, *lines, *mtime set; m->fd open), 0: recalculate,
 * -1: error */
static int read_file(struct mds *m, const char *path, int *lines, time_t *mtime)
{
  char buf[MDS_RECALC_BYTES];
  const char *s, *end, *eol;
  long long qb, qc, b = 0, c = 0, db, dc;
  size_t got = 0;
  struct stat st;
  int n = 0;

  m->fd = open(path, O_RDWR | O_APPEND | O_CLOEXEC);
  if (m->fd == -1) return errno == ENOENT ? 0 : fail(path);
  while (got < sizeof buf) {
    ssize_t r = read(m->fd, buf + got, sizeof buf - got);
    if (r == -1) {
      if (errno == EINTR) continue;
      return fail(path);
    }
    if (r == 0) break;
    got += (size_t)r;
  }
  if (fstat(m->fd, &st) == -1) return fail(path);
  if (got >= sizeof buf || memchr(buf, 0, got)) return 0;
  if (!got || buf[got - 1] != '\n') return 0;  /* an append would run two lines together */
  end = buf + got;
  eol = memchr(buf, '\n', (size_t)(end - buf));
  quota_line(buf, eol, &qb, &qc);
  if (qb != m->limit_bytes || qc != m->limit_count) return 0;
  for (s = eol + 1; s < end; s = eol + 1) {
    eol = memchr(s, '\n', (size_t)(end - s));
    s = blanks(s, eol);
    if (number(&s, eol, &db) == -1) return 0;
    if (blanks(s, eol) == s) return 0;
    s = blanks(s, eol);
    if (number(&s, eol, &dc) == -1) return 0;
    if (blanks(s, eol) != eol) return 0;
    b += db;
    c += dc;
    n++;
  }
  if (b < 0 || c < 0) return 0;
  m->bytes = b;
  m->count = c;
  *lines = n;
  *mtime = st.st_mtime;
  return 1;
}

/* ---- recalculation ---- */

static void later(struct timespec *t, const struct timespec *u)
{
  if (u->tv_sec > t->tv_sec || (u->tv_sec == t->tv_sec && u->tv_nsec > t->tv_nsec)) *t = *u;
}

/* ,S=<digits> followed by the end, ':' or ',' */
static long long size_in_name(const char *name)
{
  const char *p = strstr(name, ",S=");
  long long v = 0;
  int n = 0;

  if (!p) return -1;
  for (p += 3; *p >= '0' && *p <= '9'; p++) {
    if (++n > 18) return -1;
    v = v * 10 + (*p - '0');
  }
  if (!n || (*p && *p != ':' && *p != ',')) return -1;
  return v;
}

/* new/ or cur/ of one folder: latest mtime into *stamp; with COUNT, the messages */
static int one_dir(const char *dir, int count, struct timespec *stamp, long long *b,
                   long long *c)
{
  struct stat st;
  struct dirent *d;
  DIR *dp;

  if (stat(dir, &st) == -1) return (errno == ENOENT || errno == ENOTDIR) ? 0 : fail(dir);
  later(stamp, &st.st_mtim);
  if (!count) return 0;
  dp = opendir(dir);
  if (!dp) return (errno == ENOENT || errno == ENOTDIR) ? 0 : fail(dir);
  while ((d = readdir(dp))) {
    long long n;
    if (d->d_name[0] == '.') continue;
    n = size_in_name(d->d_name);
    if (n < 0) {
      if (fstatat(dirfd(dp), d->d_name, &st, 0) == -1) continue; /* gone meanwhile */
      n = st.st_size;
    }
    *b += n;
    *c += 1;
  }
  closedir(dp);
  return 0;
}

/* new/ and cur/ of the Maildir and of every Maildir++ folder except .Trash */
static int walk(const char *maildir, int count, struct timespec *stamp, long long *b,
                long long *c)
{
  static const char *subs[] = { "new", "cur" };
  char folder[4096], dir[4096];
  struct dirent *d;
  DIR *dp;
  int i;

  for (i = 0; i < 2; i++) {
    if (join(dir, sizeof dir, maildir, subs[i]) == -1) return fail(maildir);
    if (one_dir(dir, count, stamp, b, c) == -1) return -1;
  }
  dp = opendir(maildir);
  if (!dp) return fail(maildir);
  while ((d = readdir(dp))) {
    const char *n = d->d_name;
    if (n[0] != '.' || !strcmp(n, ".") || !strcmp(n, "..") || !strcmp(n, ".Trash")) continue;
    if (d->d_type != DT_DIR && d->d_type != DT_UNKNOWN) continue;  /* no symlinks, files */
    if (join(folder, sizeof folder, maildir, n) == -1) continue;
    for (i = 0; i < 2; i++) {
      if (join(dir, sizeof dir, folder, subs[i]) == -1) continue;
      if (one_dir(dir, count, stamp, b, c) == -1) { closedir(dp); return -1; }
    }
  }
  closedir(dp);
  return 0;
}

static int header(char *buf, size_t size, const struct mds *m)
{
  int n = 0;
  if (m->limit_bytes || !m->limit_count) n = snprintf(buf, size, "%lldS", m->limit_bytes);
  if (m->limit_count)
    n += snprintf(buf + n, size - (size_t)n, "%s%lldC", n ? "," : "", m->limit_count);
  return n;
}

/* write a new maildirsize through tmp/ and rename; m->fd becomes its descriptor */
static int replace(struct mds *m, const char *maildir, long long b, long long c)
{
  char tmp[4096], path[4096], host[64], text[128];
  size_t i;
  int fd, n, tries;

  host[0] = 0;
  gethostname(host, sizeof host - 1);
  host[sizeof host - 1] = 0;
  for (i = 0; host[i]; i++) if (host[i] == '/' || host[i] == ':') host[i] = '_';
  n = snprintf(tmp, sizeof tmp, "%s/tmp/%ld.%ld.%s.maildirsize", maildir, (long)time(0),
               (long)getpid(), host);
  if (n < 0 || (size_t)n >= sizeof tmp) { errno = ENAMETOOLONG; return fail(maildir); }
  if (join(path, sizeof path, maildir, "maildirsize") == -1) return fail(maildir);
  for (tries = 0;; tries++) {
    fd = open(tmp, O_RDWR | O_APPEND | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd != -1) break;
    if (errno != EEXIST || tries) return fail(tmp);
    unlink(tmp);  /* left by a crashed process of the same pid */
  }
  n = header(text, sizeof text, m);
  n += snprintf(text + n, sizeof text - (size_t)n, "\n%lld %lld\n", b, c);
  if (write(fd, text, (size_t)n) != n || rename(tmp, path) == -1) {
    fail(tmp);
    close(fd);
    unlink(tmp);
    return -1;
  }
  if (m->fd != -1) close(m->fd);
  m->fd = fd;
  m->bytes = b;
  m->count = c;
  return 0;
}

static int recalculate(struct mds *m, const char *maildir)
{
  int tries;

  for (tries = 0; tries < 3; tries++) {
    struct timespec before = { 0, 0 }, after = { 0, 0 };
    long long b = 0, c = 0;
    if (walk(maildir, 1, &before, &b, &c) == -1) return -1;
    if (replace(m, maildir, b, c) == -1) return -1;
    if (walk(maildir, 0, &after, 0, 0) == -1) return -1;
    if (after.tv_sec == before.tv_sec && after.tv_nsec == before.tv_nsec) break;
    /* something was delivered or removed while we counted: count again */
  }
  return 0;
}

int mds_open(struct mds *m, const char *maildir, long long add_bytes, long long add_count)
{
  char path[4096];
  time_t mtime = 0;
  int lines = 0, r;

  m->fd = -1;
  m->bytes = m->count = 0;
  if (join(path, sizeof path, maildir, "maildirsize") == -1) return fail(maildir);
  r = read_file(m, path, &lines, &mtime);
  if (r == -1) return -1;
  /* over quota by these numbers: believe them only from one fresh recalculated line */
  if (r == 1 && mds_over(m, add_bytes, add_count)
      && !(lines == 1 && time(0) < mtime + MDS_STALE_SECONDS))
    r = 0;
  if (r == 0) return recalculate(m, maildir);
  return 0;
}

int mds_over(const struct mds *m, long long add_bytes, long long add_count)
{
  return (m->limit_bytes && m->bytes + add_bytes > m->limit_bytes)
      || (m->limit_count && m->count + add_count > m->limit_count);
}

int mds_add(struct mds *m, long long bytes, long long count)
{
  char line[64];
  int n = snprintf(line, sizeof line, "%lld %lld\n", bytes, count);

  if (m->fd == -1) { errno = EBADF; return fail("maildirsize"); }
  if (write(m->fd, line, (size_t)n) != n) return fail("maildirsize");
  m->bytes += bytes;
  m->count += count;
  return 0;
}

double mds_percent(const struct mds *m)
{
  double p = 0, q;
  if (m->limit_bytes) p = 100.0 * (double)m->bytes / (double)m->limit_bytes;
  if (m->limit_count) {
    q = 100.0 * (double)m->count / (double)m->limit_count;
    if (q > p) p = q;
  }
  return p;
}
