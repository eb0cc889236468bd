/* qmail-local wrapper: ask qmailsqld for the alias-table lines of this delivery.
 * No rows: exec the stock qmail-local unchanged. Rows: exec it with dash and ext
 * empty and the lines as aliasempty, so stock qmail-local delivers them.
 * qmail-getpw's deferral answer (a home under /dev/null): print its reason, exit 111.
 * Any doubt: exit 111 and the message stays queued. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "qsclient.h"

#define MAXOPTS 64

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

/* die 111 if homedir/name exists: stock qmail-local would read it instead */
static void shadow(const char *home, const char *name)
{
  static char path[4096];
  struct stat st;
  size_t h = strlen(home), n = strlen(name);

  if (h + 1 + n >= sizeof path) qs_die(111, "home directory path too long: ", home, (char *)0);
  memcpy(path, home, h);
  path[h] = '/';
  memcpy(path + h + 1, name, n + 1);
  if (lstat(path, &st) == 0)
    qs_die(111, path, " exists and would override the alias-table rows for this address; "
           "move its lines into the alias table or remove it (qmail-local deferred the message)",
           (char *)0);
  if (errno != ENOENT && errno != ENOTDIR)
    qs_die(111, "unable to check ", path, ": ", strerror(errno),
           " (qmail-local deferred the message)", (char *)0);
}

int main(int argc, char **argv)
{
  char *nargv[MAXOPTS + 10];
  char **op, *body;
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

  qs_begin("local");
  for (i = 0; i < 6; i++) qs_arg(op[i]);
  status = qs_call(&body, &len);
  if (status) qs_die_status(status, body, len);
  if (!len) run(argv);

  if (memchr(body, 0, len) || body[len - 1] != '\n')
    qs_die(111, "malformed local answer from qmailsqld at ", qs_socket_path(),
           " (qmail-local deferred the message)", (char *)0);
  shadow(op[1], ".qmail");
  shadow(op[1], ".qmaildefault");

  /* same options, then -- user homedir local "" "" domain sender LINES */
  n = 0;
  nargv[n++] = argv[0];
  for (i = 1; i < (size_t)a; i++)
    if (strcmp(argv[i], "--")) nargv[n++] = argv[i];
  nargv[n++] = "--";
  nargv[n++] = op[0];
  nargv[n++] = op[1];
  nargv[n++] = op[2];
  nargv[n++] = "";
  nargv[n++] = "";
  nargv[n++] = op[5];
  nargv[n++] = op[6];
  nargv[n++] = body;
  nargv[n] = 0;
  run(nargv);
  return 111;
}
