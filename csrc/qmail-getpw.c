/* qmail-getpw LOCAL: ask qmailsqld where mail for LOCAL goes.
 * Output and exit codes as stock qmail-getpw: six NUL-terminated fields
 * (user uid gid homedir dash ext) and exit 0, or the daemon's status.
 * Run by qmail-lspawn (no usable stderr), a temporary failure is the deferral
 * answer instead (qsclient.h, PROTOCOL.md), so its reason reaches qmail-send's log. */
#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <unistd.h>
#include "qsclient.h"

/* fd 2 is open for writing (a terminal, a pipe, a log): someone reads messages there.
 * qmail-lspawn leaves it closed, or holding the message file open read-only. */
static int stderr_usable(void)
{
  int flags = fcntl(2, F_GETFL);
  return flags != -1 && (flags & O_ACCMODE) != O_RDONLY;
}

int main(int argc, char **argv)
{
  char *body;
  size_t len, i;
  int status, fields = 0;

  qs_prog = "qmail-getpw";
  if (!stderr_usable()) {
    /* qmail-lspawn refuses uid 0 for qmail-local: as root, a plain 111 */
    if (getuid()) qs_defer_fd = 1;
    /* keep the daemon's socket off a free fd 2 */
    if (fcntl(2, F_GETFD) == -1) open("/dev/null", O_WRONLY);
  }
  if (argc < 2) qs_die(100, "usage: qmail-getpw local", (char *)0);
  signal(SIGPIPE, SIG_IGN);

  qs_begin("getpw");
  qs_arg(argv[1]);
  status = qs_call(&body, &len);
  if (status) qs_die_status(status, body, len);

  for (i = 0; i < len; i++)
    if (!body[i]) fields++;
  if (fields != 6 || !len || body[len - 1])
    qs_die(111, "malformed getpw answer from qmailsqld at ", qs_socket_path(),
           " (expected six NUL-terminated fields)", (char *)0);
  if (qs_writeall(1, body, len) == -1) {
    qs_defer_fd = -1; /* fd 1 is what failed */
    qs_die(111, "unable to write output", (char *)0);
  }
  return 0;
}
