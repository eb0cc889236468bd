/* qmail-getpw LOCAL: ask qmailsqld where mail for LOCAL goes.
 * Output and exit codes as stock qmail-getpw: six NUL-terminated fields
 * (user uid gid homedir dash ext) and exit 0, or the daemon's status. */
#include <signal.h>
#include <stddef.h>
#include "qsclient.h"

int main(int argc, char **argv)
{
  char *body;
  size_t len, i;
  int status, fields = 0;

  qs_prog = "qmail-getpw";
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
  if (qs_writeall(1, body, len) == -1) qs_die(111, "unable to write output", (char *)0);
  return 0;
}
