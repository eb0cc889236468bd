/* A stand-in for qmail's stock qmail-local, for tests and benchmarks only (env
 * QMAILSQL_QMAIL_LOCAL): `-- user homedir local dash ext domain sender aliasempty`.
 *
 * It delivers the way stock qmail-local does, so the files and their sizes are the
 * real ones: in HOMEDIR, the lines of HOMEDIR/.qmail when dash is empty and that file
 * exists, else aliasempty; a line ending in '/' is a Maildir: the message from fd 0
 * (read from its start), after "Return-Path: <sender>" (the local part quoted where
 * RFC 821 needs it) and "Delivered-To: local@domain", goes into tmp/, is fsync()ed
 * (unless $QMAILSQL_STANDIN_NOFSYNC is set: bench/delivery.py prices CPU, not disk
 * waits), linked into new/ and removed from tmp/.
 * `|command` runs /bin/sh -c command on the message (99 stops, 100 bounces, other
 * failures 111); a forward (`&addr` or `addr`) is appended to $QMAILSQL_STANDIN_LOG
 * as "forward addr". Prints "did F+W+P" like stock. Exit 0, 100 or 111. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char *rp, *dt;
static int files, forwards, programs, seq, nofsync;

static int put(int fd, const char *s, size_t n)
{
  while (n) {
    ssize_t w = write(fd, s, n);
    if (w == -1) { if (errno == EINTR) continue; return -1; }
    s += w;
    n -= (size_t)w;
  }
  return 0;
}

static int maildir(const char *home, const char *dir)
{
  char tmp[4096], new[4096], host[64], buf[65536];
  ssize_t r;
  int fd, ok;

  host[0] = 0;
  gethostname(host, sizeof host - 1);
  snprintf(tmp, sizeof tmp, "%s/%s/tmp/%ld.%ld_%d.%s", home, dir, (long)time(0),
           (long)getpid(), seq++, host);
  snprintf(new, sizeof new, "%s/%s/new/%s", home, dir, strrchr(tmp, '/') + 1);
  fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL, 0600);
  if (fd == -1) return -1;
  ok = put(fd, rp, strlen(rp)) == 0 && put(fd, dt, strlen(dt)) == 0
       && lseek(0, 0, SEEK_SET) == 0;
  while (ok && (r = read(0, buf, sizeof buf)) > 0) ok = put(fd, buf, (size_t)r) == 0;
  ok = ok && r == 0 && (nofsync || fsync(fd) == 0);
  if (close(fd) || !ok || link(tmp, new)) { unlink(tmp); return -1; }
  unlink(tmp);
  files++;
  return 0;
}

static int program(const char *cmd)
{
  int st;
  pid_t pid;
  if (lseek(0, 0, SEEK_SET) != 0) return 111;
  pid = fork();
  if (pid == 0) { execl("/bin/sh", "sh", "-c", cmd, (char *)0); _exit(111); }
  if (pid == -1 || waitpid(pid, &st, 0) == -1 || !WIFEXITED(st)) return 111;
  programs++;
  st = WEXITSTATUS(st);
  return st == 0 || st == 99 || st == 100 ? st : 111;
}

static void forward(const char *addr)
{
  const char *log = getenv("QMAILSQL_STANDIN_LOG");
  FILE *f = log ? fopen(log, "a") : 0;
  if (f) { fprintf(f, "forward %s\n", addr); fclose(f); }
  forwards++;
}

/* "Return-Path: <sender>\n" with the local part quoted as qmail's quote2() does */
static char *return_path(const char *sender)
{
  const char *at = strrchr(sender, '@');
  size_t n = at ? (size_t)(at - sender) : strlen(sender), i;
  char *out = malloc(2 * strlen(sender) + 24), *o = out;
  int quote = *sender && (!n || sender[0] == '.' || sender[n - 1] == '.');

  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char)sender[i];
    if (c < 33 || c > 126 || strchr("()<>@,;:\\\"[]", c)) quote = 1;
    if (c == '.' && sender[i + 1] == '.') quote = 1;
  }
  o += sprintf(o, "Return-Path: <");
  if (quote) *o++ = '"';
  for (i = 0; i < n; i++) {
    char c = sender[i];
    if (quote && (c == '\r' || c == '\n' || c == '"' || c == '\\')) *o++ = '\\';
    *o++ = c == '\n' ? '_' : c;
  }
  if (quote) *o++ = '"';
  sprintf(o, "%s>\n", sender + n);
  return out;
}

int main(int argc, char **argv)
{
  static char lines[65536];
  char *home, *local, *dash, *domain, *sender, *s;
  size_t len;
  int a = 1, fd;

  if (a < argc && !strcmp(argv[a], "--")) a++;
  if (argc - a != 8) return 100;
  home = argv[a + 1]; local = argv[a + 2]; dash = argv[a + 3];
  domain = argv[a + 5]; sender = argv[a + 6];
  nofsync = getenv("QMAILSQL_STANDIN_NOFSYNC") != 0;
  rp = return_path(sender);
  dt = malloc(strlen(local) + strlen(domain) + 20);
  sprintf(dt, "Delivered-To: %s@%s\n", local, domain);
  if (chdir(home)) return 111;

  len = 0;
  if (!*dash && (fd = open(".qmail", O_RDONLY)) != -1) {
    ssize_t r;
    while ((r = read(fd, lines + len, sizeof lines - 1 - len)) > 0) len += (size_t)r;
    close(fd);
  }
  if (!len) {
    len = strlen(argv[a + 7]);
    if (len >= sizeof lines - 1) return 111;
    memcpy(lines, argv[a + 7], len);
  }
  if (lines[len - 1] != '\n') lines[len++] = '\n';
  lines[len] = 0;

  for (s = lines; *s; ) {
    char *eol = strchr(s, '\n'), *e = eol;
    int r = 0;
    *eol = 0;
    while (e > s && (e[-1] == ' ' || e[-1] == '\t')) *--e = 0;
    if (*s == '#' || !*s) ;
    else if (*s == '.' || *s == '/') {
      if (e[-1] != '/' || maildir(home, s)) return 111;  /* (no mbox here) */
    } else if (*s == '|') {
      r = program(s + 1);
      if (r == 100 || r == 111) return r;
    } else
      forward(*s == '&' ? s + 1 : s);
    if (r == 99) break;
    s = eol + 1;
  }
  printf("did %d+%d+%d\n", files, forwards, programs);
  return 0;
}
