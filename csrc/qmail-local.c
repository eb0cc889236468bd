/* qmail-local wrapper: ask qmailsqld for the alias-table lines of this delivery.
 * No rows: exec the stock qmail-local unchanged. Rows: exec it with dash empty and
 * the lines as aliasempty, so stock qmail-local delivers them; ext is empty too,
 * unless an owner file makes the address's own extension matter (see below).
 * qmail-getpw's deferral answer (a home under /dev/null): print its reason, exit 111.
 * Any doubt: exit 111 and the message stays queued. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "qsclient.h"

#define MAXOPTS 64
#define MAXPATH 4096

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

/* whether home/.qmail + the first N bytes of S + SUFFIX exists: stat() as stock
 * qmail-local looks for owner files (FOLLOW), else lstat() (a dangling link counts);
 * trouble other than "no such file" defers */
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
 * "default", longest first; its path, or 0 */
static const char *dot_qmail(const char *home, const char *s, size_t d)
{
  size_t i = strlen(s);

  if (exists(home, s, i, "", 0)) return path;
  for (;; i--) {
    if ((i == d || s[i - 1] == '-') && exists(home, s, i, "default", 0)) return path;
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

int main(int argc, char **argv)
{
  char *nargv[MAXOPTS + 10];
  char **op, *body, *own, *ext = "";
  const char *file;
  size_t len, i;
  int a, n, status;

  qs_prog = "qmail-local";

  /* options as stock qmail-local's getopt("nN") sees them */
  for (a = 1; a < argc; a++) {
    const char *s = argv[a];
    if (s[0] != '-' || !s[1]) break;
    if (!strcmp(s, "--")) { a++; break; }
    for (s++; *s; s++)
      if (*s != 'n' && *s != 'N') run(argv); /* stock prints its usage */
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

  status = ask("local", op, &body, &len);
  if (status) qs_die_status(status, body, len);
  if (!len) {
    /* no rows, and no file either: stock bounces it, so a replica's "no rows" must not
     * be the last word (the daemon asks its write_server; the lag rule) */
    if (!*op[3] || dot_qmail(op[1], own, strlen(op[3]))) run(argv);
    status = ask("local-confirm", op, &body, &len);
    if (status) qs_die_status(111, body, len); /* never a bounce because of the daemon */
    if (!len) run(argv);
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
  file = dot_qmail(op[1], safe(ext), 0);
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
  run(nargv);
  return 111;
}
