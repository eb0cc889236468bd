/* qmail-local wrapper: ask qmailsqld for the alias-table lines of this delivery,
 * and the mailbox's quota. No rows: exec the stock qmail-local unchanged. Rows: exec
 * it with dash empty and the lines as aliasempty, so stock qmail-local delivers them;
 * ext is empty too, unless an owner file makes the address's own extension matter
 * (see below). A mailbox with a quota (Maildir++, maildirsize.c): the stock program
 * runs as a child instead, between the quota check and the recording of what it
 * delivered into HOME/Maildir. qmail-getpw's deferral answer (a home under
 * /dev/null): print its reason, exit 111. Any doubt: exit 111 and the message stays
 * queued. */
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "maildirsize.h"
#include "qsclient.h"

#define MAXOPTS 64
#define MAXPATH 4096

extern char **environ;
#define LOCK_WAIT 300          /* seconds to wait for another delivery into the Maildir */
#define DOTQMAIL_MAX 65536     /* a longer dot-qmail file is not accounted for */

static const char *stock(void)
{
  const char *s = getenv("QMAILSQL_QMAIL_LOCAL");
  return (s && *s) ? s : QMAIL_DIR "/bin/qmail-local.orig";
}

static void run(char **argv)
{
  execv(stock(), argv);
  qs_die(111, "unable to run the stock qmail-local ", stock(), ": ", strerror(errno),
         " (qmail-local deferred the message)", (char *)0);
}

static char path[MAXPATH];

/* path = a "/" b, or die 111 */
static char *join(const char *a, const char *b)
{
  size_t n = strlen(a), m = strlen(b);
  if (n + 1 + m >= sizeof path)
    qs_die(111, "path too long: ", a, " (qmail-local deferred the message)", (char *)0);
  memcpy(path, a, n);
  path[n] = '/';
  memcpy(path + n + 1, b, m + 1);
  return path;
}

/* whether home/.qmail + the first N bytes of S + SUFFIX exists: stat() as stock
 * qmail-local opens files (FOLLOW: owner files, and what the quota counts), else
 * lstat() (a dangling link counts); trouble other than "no such file" defers */
static int exists(const char *home, const char *s, size_t n, const char *suffix, int follow)
{
  struct stat st;
  size_t h = strlen(home), x = strlen(suffix);

  if (h + 7 + n + x >= sizeof path)
    qs_die(111, "path too long under ", home, " (qmail-local deferred the message)", (char *)0);
  memcpy(path, home, h);
  memcpy(path + h, "/.qmail", 7);
  memcpy(path + h + 7, s, n);
  memcpy(path + h + 7 + n, suffix, x + 1);
  if ((follow ? stat(path, &st) : lstat(path, &st)) == 0) return 1;
  if (errno != ENOENT && errno != ENOTDIR)
    qs_die(111, "unable to check ", path, ": ", strerror(errno),
           " (qmail-local deferred the message)", (char *)0);
  return 0;
}

/* qmail-local's safeext: ASCII lower case, '.' -> ':' */
static char *safe(const char *s)
{
  static char out[MAXPATH];
  size_t i, n = strlen(s);

  if (n >= sizeof out) qs_die(111, "extension too long (qmail-local deferred the message)",
                              (char *)0);
  for (i = 0; i <= n; i++)
    out[i] = (s[i] >= 'A' && s[i] <= 'Z') ? s[i] + 32 : (s[i] == '.' ? ':' : s[i]);
  return out;
}

/* the first dot-qmail file stock qmail-local would read for dash and safeext, given
 * as S = dash + safeext and D = strlen(dash), in its own search order (qmesearch):
 * .qmail S, then .qmail dash + each prefix of safeext that is empty or ends in '-' +
 * "default", longest first; its path, or 0. FOLLOW: as exists() */
static const char *dot_qmail(const char *home, const char *s, size_t d, int follow)
{
  size_t i = strlen(s);

  if (exists(home, s, i, "", follow)) return path;
  for (;; i--) {
    if ((i == d || s[i - 1] == '-') && exists(home, s, i, "default", follow)) return path;
    if (i == d) return 0;
  }
}

/* which owner files stock qmail-local finds for .qmail S: 0 none, 1 S-owner,
 * 2 S-owner and S-owner-default (the envelope sender follows from that) */
static int owner(const char *home, const char *s)
{
  if (!exists(home, s, strlen(s), "-owner", 1)) return 0;
  return 1 + exists(home, s, strlen(s), "-owner-default", 1);
}

static char *cat(const char *a, const char *b)
{
  size_t n = strlen(a);
  char *s = malloc(n + strlen(b) + 1);

  if (!s) qs_die(111, "out of memory (qmail-local deferred the message)", (char *)0);
  memcpy(s, a, n);
  strcpy(s + n, b);
  return s;
}

static int ask(const char *command, char **op, char **body, size_t *len)
{
  int i;

  qs_begin(command);
  for (i = 0; i < 6; i++) qs_arg(op[i]);
  return qs_call(body, len);
}

/* ---- quota ---- */

struct quota {
  long long bytes, count;   /* 0: no limit */
  long long warn;           /* percent, 0: no warning */
  int defer;                /* over quota: 111 instead of 100 */
};

/* the first line of a localq answer: "SIZE COUNT WARN bounce|defer\n" */
static void parse_quota(char **body, size_t *len, struct quota *q)
{
  char *s = *body, *end = memchr(*body, '\n', *len), *p;
  long long *v[3];
  int i;

  v[0] = &q->bytes; v[1] = &q->count; v[2] = &q->warn;
  if (!end) goto bad;
  for (i = 0; i < 3; i++) {
    if (*s < '0' || *s > '9') goto bad;
    *v[i] = strtoll(s, &p, 10);
    if (*p != ' ') goto bad;
    s = p + 1;
  }
  if (end - s == 6 && !memcmp(s, "bounce", 6)) q->defer = 0;
  else if (end - s == 5 && !memcmp(s, "defer", 5)) q->defer = 1;
  else goto bad;
  *len -= (size_t)(end + 1 - *body);
  *body = end + 1;
  return;
bad:
  qs_die(111, "malformed localq answer from qmailsqld at ", qs_socket_path(),
         " (qmail-local deferred the message)", (char *)0);
}

static int same(const char *p, const struct stat *md)
{
  struct stat st;
  return stat(p, &st) == 0 && st.st_dev == md->st_dev && st.st_ino == md->st_ino;
}

/* how many of the dot-qmail LINES deliver into the Maildir MD (or one of its
 * Maildir++ folders other than .Trash), as stock qmail-local reads them */
static long long copies(const char *lines, size_t len, const char *home, const struct stat *md)
{
  static char line[MAXPATH];
  const char *s = lines, *end = lines + len;
  long long n = 0;

  while (s < end) {
    const char *eol = memchr(s, '\n', (size_t)(end - s));
    size_t k;
    char *last;
    if (!eol) eol = end;
    k = (size_t)(eol - s);
    while (k && (s[k - 1] == ' ' || s[k - 1] == '\t')) k--;
    if (k && k < sizeof line - 1 && (s[0] == '.' || s[0] == '/') && s[k - 1] == '/') {
      memcpy(line, s, k);
      line[k] = 0;
      if (line[0] == '/') memcpy(path, line, k + 1);
      else join(home, line);  /* qmail-local works in HOME */
      if (same(path, md)) n++;
      else {  /* .Folder/ whose parent is the Maildir */
        size_t l = strlen(path);
        while (l > 1 && path[l - 1] == '/') path[--l] = 0;
        last = strrchr(path, '/');
        if (last && last[1] == '.' && strcmp(last, "/.") && strcmp(last, "/..")
            && strcmp(last, "/.Trash") && l + 4 < sizeof path) {
          memcpy(path + l, "/..", 4);
          if (same(path, md)) n++;
        }
      }
    }
    s = eol + 1;
  }
  return n;
}

/* the dot-qmail file stock qmail-local would read for DASH and EXT, into BUF: its
 * length (0: empty), -1 when there is none, -2 when it cannot tell */
static long read_dot_qmail(const char *home, const char *dash, const char *ext, char *buf,
                           size_t size)
{
  const char *file = dot_qmail(home, cat(dash, safe(ext)), strlen(dash), 1);
  struct stat st;
  ssize_t got = 0, r;
  int fd;

  if (!file) return -1;
  fd = open(file, O_RDONLY | O_CLOEXEC);
  if (fd == -1) return -2;
  if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode)) { close(fd); return -2; }
  while ((size_t)got < size && (r = read(fd, buf + got, size - (size_t)got)) != 0) {
    if (r == -1) { if (errno == EINTR) continue; close(fd); return -2; }
    got += r;
  }
  close(fd);
  return (size_t)got < size ? (long)got : -2;
}

/* length of an address as qmail-local writes it into Return-Path: the local part
 * is quoted (RFC 821) unless it is a dot-string of atom characters */
static size_t quoted_len(const char *addr)
{
  const char *at = strrchr(addr, '@');
  size_t n = at ? (size_t)(at - addr) : strlen(addr), i, extra = 0;
  int quote = !n || addr[0] == '.' || addr[n - 1] == '.';

  if (!*addr) return 0;
  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char)addr[i];
    if (c <= 32 || c >= 127 || strchr("\"(),:;<>@[\\]", c)) quote = 1;
    if (i + 1 < n && c == '.' && addr[i + 1] == '.') quote = 1;
    if (c == '\r' || c == '\n' || c == '"' || c == '\\') extra++;
  }
  return strlen(addr) + (quote ? 2 + extra : 0);
}

static char text[1024];

static void full(const struct quota *q, const struct mds *m, long long need, const char *local,
                 const char *domain)
{
  snprintf(text, sizeof text, "Sorry, the mailbox of %s@%s is full: it holds %lld of %lld "
           "bytes and %lld of %lld messages (0: no limit), and this message needs %lld "
           "bytes more. (%s)", local, domain, m->bytes, q->bytes, m->count, q->count, need,
           q->defer ? "#4.2.2" : "#5.2.2");
  qs_die(q->defer ? 111 : 100, text, (char *)0);
}

/* the warning message, into new/ of the Maildir; its size, or 0 when it failed */
static long long warning(const char *maildir, const struct quota *q, const struct mds *m,
                         const char *local, const char *domain)
{
  static char msg[2048], tmp[MAXPATH], name[256];
  char host[64], date[64];
  time_t now = time(0);
  size_t dl = strlen(domain);
  int n, fd;

  if (!strncmp(local, domain, dl) && local[dl] == '-') local += dl + 1;  /* virtual prefix */
  host[0] = 0;
  gethostname(host, sizeof host - 1);
  host[sizeof host - 1] = 0;
  for (n = 0; host[n]; n++) if (host[n] == '/' || host[n] == ':') host[n] = '_';
  strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S +0000", gmtime(&now));
  n = snprintf(msg, sizeof msg,
               "From: MAILER-DAEMON@%s\nTo: %s@%s\nSubject: Your mailbox is %d%% full\n"
               "Date: %s\nMessage-ID: <%ld.%ld.quotawarn@%s>\nAuto-Submitted: auto-generated\n"
               "MIME-Version: 1.0\nContent-Type: text/plain; charset=us-ascii\n\n"
               "Your mailbox %s@%s is %d%% full: it holds %lld bytes in %lld messages.\n"
               "The limit is %lld bytes and %lld messages (0: no limit).\n\n"
               "When it is full, new mail is %s. Please delete the mail you no longer\n"
               "need, or ask your mail administrator for more room.\n\n"
               "This warning comes once, and again only after the mailbox has been\n"
               "below %lld%% and fills up again.\n",
               domain, local, domain, (int)mds_percent(m), date, (long)now, (long)getpid(),
               host, local, domain, (int)mds_percent(m), m->bytes, m->count, q->bytes,
               q->count, q->defer ? "held back and finally returned to its senders"
                                  : "returned to its senders", q->warn);
  if (n < 0 || (size_t)n >= sizeof msg) return 0;
  snprintf(name, sizeof name, "%ld.P%ldQW.%s,S=%d", (long)now, (long)getpid(), host, n);
  if ((size_t)snprintf(tmp, sizeof tmp, "%s/tmp/%s", maildir, name) >= sizeof tmp) return 0;
  fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd == -1) return 0;
  if (qs_writeall(fd, msg, (size_t)n) || fsync(fd) || close(fd)) { unlink(tmp); return 0; }
  memcpy(path, tmp, strlen(tmp) + 1);
  memcpy(path + strlen(maildir) + 1, "new", 3);  /* tmp/NAME -> new/NAME */
  if (link(tmp, path) == -1) { unlink(tmp); return 0; }
  unlink(tmp);
  return n;
}

/* run the stock qmail-local as a child between the quota check and the record */
static void counted(char **argv, char **op, const char *lines, size_t len, struct quota *q)
{
  static char maildir[MAXPATH], buf[DOTQMAIL_MAX];
  struct stat md, msg;
  struct mds m, after;
  long long n, each, add, addc, w;
  int status;
  pid_t pid;

  if (strlen(op[1]) + 9 >= sizeof maildir) run(argv);
  strcpy(maildir, join(op[1], "Maildir"));
  if (stat(maildir, &md) == -1 || !S_ISDIR(md.st_mode)) run(argv);
  if (!len) {  /* no rows: the dot-qmail file stock qmail-local reads, else aliasempty */
    long got = read_dot_qmail(op[1], op[3], op[4], buf, sizeof buf);
    if (got == -2 || (got == -1 && *op[3])) run(argv);  /* unreadable; or it bounces */
    if (got > 0) { lines = buf; len = (size_t)got; }
    else { lines = op[7]; len = strlen(op[7]); }
  }
  n = copies(lines, len, op[1], &md);
  if (!n) run(argv);  /* forwards and programs only: nothing lands in this Maildir */

  if (fstat(0, &msg) == -1 || !S_ISREG(msg.st_mode))
    qs_die(111, "the message (fd 0) is not a file, so its size for the quota is unknown "
           "(qmail-local deferred the message)", (char *)0);
  each = (long long)msg.st_size + 14 + (long long)quoted_len(op[6]) + 2   /* Return-Path */
       + 14 + (long long)strlen(op[2]) + 1 + (long long)strlen(op[5]) + 1; /* Delivered-To */
  add = each * n;

  if (mds_lock(maildir, LOCK_WAIT) == -1)
    qs_die(111, errno == EINTR ? "timed out waiting for the lock " : "unable to lock ",
           mds_failed, errno == EINTR ? "" : ": ", errno == EINTR ? "" : strerror(errno),
           " (qmail-local deferred the message)", (char *)0);
  m.limit_bytes = q->bytes;
  m.limit_count = q->count;
  if (mds_open(&m, maildir, add, n) == -1)
    qs_die(111, "unable to read the quota in ", mds_failed, ": ", strerror(errno),
           " (qmail-local deferred the message)", (char *)0);
  if (mds_over(&m, add, n)) full(q, &m, add, op[2], op[5]);

  errno = posix_spawn(&pid, stock(), 0, 0, argv, environ);  /* vfork+exec: cheap */
  if (errno)
    qs_die(111, "unable to run the stock qmail-local ", stock(), ": ", strerror(errno),
           " (qmail-local deferred the message)", (char *)0);
  while (waitpid(pid, &status, 0) == -1)
    if (errno != EINTR)
      qs_die(111, "lost the stock qmail-local: ", strerror(errno), (char *)0);
  if (!WIFEXITED(status))
    qs_die(111, "the stock qmail-local crashed (qmail-local deferred the message)", (char *)0);
  if (WEXITSTATUS(status)) _exit(WEXITSTATUS(status));

  /* delivered: one line for it, and for the warning when this crossed the threshold */
  after = m;
  after.bytes += add;
  after.count += n;
  addc = n;
  join(maildir, "quotawarn");
  if (q->warn && mds_percent(&after) >= (double)q->warn) {
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd != -1) {
      close(fd);
      w = warning(maildir, q, &after, op[2], op[5]);
      if (w) { add += w; addc++; }
      else unlink(join(maildir, "quotawarn"));  /* try again at the next delivery */
    }
  } else
    unlink(path);  /* below the threshold: the next crossing warns again */
  if (mds_add(&m, add, addc) == -1)
    qs_warn("delivered, but unable to record it in ", maildir, "/maildirsize: ",
            strerror(errno), " (the next recalculation counts it)", (char *)0);
  _exit(0);
}

/* hand ARGV to the stock qmail-local: through the quota when the mailbox has one
 * and this is a delivery (not -n); LINES: the alias-table rows, if any */
static void deliver(char **argv, char **op, const char *lines, size_t len, struct quota *q,
                    int doit)
{
  if (doit && (q->bytes || q->count)) counted(argv, op, lines, len, q);
  run(argv);
}

int main(int argc, char **argv)
{
  char *nargv[MAXOPTS + 10];
  char **op, *body, *own, *ext = "";
  const char *file;
  size_t len, i;
  int a, n, status, doit = 1, localq = 1;
  struct quota q = { 0, 0, 0, 0 };

  qs_prog = "qmail-local";

  /* options as stock qmail-local's getopt("nN") sees them */
  for (a = 1; a < argc; a++) {
    const char *s = argv[a];
    if (s[0] != '-' || !s[1]) break;
    if (!strcmp(s, "--")) { a++; break; }
    for (s++; *s; s++) {
      if (*s != 'n' && *s != 'N') run(argv); /* stock prints its usage */
      doit = *s == 'N';
    }
  }
  if (argc - a != 8 || a > MAXOPTS) run(argv);
  op = argv + a; /* user homedir local dash ext domain sender aliasempty */

  /* qmail-getpw's deferral answer (qsclient.h): its reason goes to qmail-send's log */
  if (!strncmp(op[1], QS_DEFER_HOME, sizeof QS_DEFER_HOME - 1)) {
    const char *reason = op[1] + sizeof QS_DEFER_HOME - 1;
    qs_writeall(2, reason, strlen(reason));
    qs_writeall(2, "\n", 1);
    _exit(111);
  }

  own = cat(op[3], safe(op[4])); /* .qmail + this: the address's own dot-qmail name */

  status = ask("localq", op, &body, &len);
  if (status == 100 && len >= 15 && !memcmp(body, "unknown command", 15)) {
    localq = 0;  /* an older qmailsqld: no quotas */
    status = ask("local", op, &body, &len);
  }
  if (status) qs_die_status(status, body, len);
  if (localq) parse_quota(&body, &len, &q);
  if (!len) {
    /* no rows, and no file either: stock bounces it, so a replica's "no rows" must not
     * be the last word (the daemon asks its write_server; the lag rule) */
    if (!*op[3] || dot_qmail(op[1], own, strlen(op[3]), 0)) deliver(argv, op, 0, 0, &q, doit);
    status = ask("local-confirm", op, &body, &len);
    if (status) qs_die_status(111, body, len); /* never a bounce because of the daemon */
    if (!len) deliver(argv, op, 0, 0, &q, doit);
  }

  if (memchr(body, 0, len) || body[len - 1] != '\n')
    qs_die(111, "malformed local answer from qmailsqld at ", qs_socket_path(),
           " (qmail-local deferred the message)", (char *)0);

  /* Stock qmail-local reads its owner files as .qmail + dash + safeext + "-owner", and
   * with dash and ext empty it would read .qmail-owner. When that differs from the
   * address's own (and the sender is one it would replace), hand it ext = dash + ext
   * instead: with dash still empty it then finds the address's own owner file. */
  if (*own && *op[6] && strcmp(op[6], "#@[]") && owner(op[1], own) != owner(op[1], "")) {
    if (strcmp(safe(op[3]), op[3]))
      qs_die(111, "dash ", op[3], " has upper case or '.', so the owner file .qmail", own,
             "-owner cannot be kept for the alias-table rows; deliver this address by a "
             "dot-qmail file (qmail-local deferred the message)", (char *)0);
    ext = cat(op[3], op[4]);
  }
  /* a dot-qmail file stock qmail-local would read instead of the lines */
  file = dot_qmail(op[1], safe(ext), 0, 0);
  if (file)
    qs_die(111, file, " exists and would override the alias-table rows for this "
           "address; move its lines into the alias table or remove it (qmail-local "
           "deferred the message)", (char *)0);

  /* same options, then -- user homedir local "" ext domain sender LINES */
  n = 0;
  nargv[n++] = argv[0];
  for (i = 1; i < (size_t)a; i++)
    if (strcmp(argv[i], "--")) nargv[n++] = argv[i];
  nargv[n++] = "--";
  nargv[n++] = op[0];
  nargv[n++] = op[1];
  nargv[n++] = op[2];
  nargv[n++] = "";
  nargv[n++] = ext;
  nargv[n++] = op[5];
  nargv[n++] = op[6];
  nargv[n++] = body;
  nargv[n] = 0;
  deliver(nargv, op, body, len, &q, doit);
  return 111;
}
