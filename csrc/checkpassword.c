/* checkpassword prog [args...]: the checkpassword interface
 * (cr.yp.to/checkpwd/interface.html), answered by qmailsqld.
 * Exit 1 bad login, 2 misuse, 111 temporary trouble; else exec prog as the user. */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "qsclient.h"

static char up[513];

/* next NUL-terminated field of body at *pos, or 0 if there is none */
static char *field(char *body, size_t len, size_t *pos)
{
  char *s = body + *pos;
  size_t n;
  if (*pos >= len) return 0;
  n = strnlen(s, len - *pos);
  if (n == len - *pos) return 0;
  *pos += n + 1;
  return s;
}

/* the service the login is for, for the mailbox's service bars (qmailsql/services.py):
 * $QMAILSQL_SERVICE; else smtp when $SMTPAUTH is set (qmail-smtpd AUTH patches offer
 * AUTH only then); else pop3 when the program to run is qmail-pop3d (qmail-popup);
 * else none, and qmailsqld refuses a mailbox barred from anything */
static const char *service(const char *prog)
{
  const char *s = getenv("QMAILSQL_SERVICE");
  const char *base = strrchr(prog, '/');
  if (s && *s) return s;
  if (getenv("SMTPAUTH")) return "smtp";
  base = base ? base + 1 : prog;
  return strcmp(base, "qmail-pop3d") ? "" : "pop3";
}

static int number(const char *s, unsigned long *out)
{
  unsigned long v = 0;
  if (!*s) return 0;
  for (; *s; s++) {
    if (*s < '0' || *s > '9') return 0;
    if (v > (0xfffffffeUL - (unsigned long)(*s - '0')) / 10) return 0;
    v = v * 10 + (unsigned long)(*s - '0');
  }
  *out = v;
  return 1;
}

int main(int argc, char **argv)
{
  char *body, *pass, *user, *suid, *sgid, *home, *shell, *ip;
  size_t len, pos, got = 0;
  unsigned long uid, gid;
  int status;

  qs_prog = "checkpassword";
  if (argc < 2) qs_die(2, "usage: checkpassword prog [args...]", (char *)0);

  for (;;) {
    ssize_t r = read(3, up + got, sizeof up - got);
    if (r == -1) {
      if (errno == EINTR) continue;
      qs_die(2, "unable to read login and password from descriptor 3: ", strerror(errno), (char *)0);
    }
    if (r == 0) break;
    got += (size_t)r;
    if (got > 512) {
      qs_wipe(up, sizeof up);
      qs_die(2, "more than 512 bytes on descriptor 3", (char *)0);
    }
  }
  pos = 0;
  user = field(up, got, &pos);
  pass = user ? field(up, got, &pos) : 0;
  if (!pass) {
    qs_wipe(up, sizeof up);
    qs_die(2, "malformed input on descriptor 3 (want login\\0password\\0timestamp\\0)", (char *)0);
  }

  ip = getenv("TCPREMOTEIP");
  qs_begin("auth");
  qs_arg(user);
  qs_arg(pass);
  qs_arg(ip ? ip : "");
  qs_arg(service(argv[1]));
  qs_wipe(up, sizeof up);
  status = qs_call(&body, &len);  /* dies 111 on trouble */
  qs_wipe_request();
  if (status == 1 || status == 2) qs_die_status(status, body, len);
  if (status) qs_die_status(111, body, len);

  pos = 0;
  user = field(body, len, &pos);
  suid = field(body, len, &pos);
  sgid = field(body, len, &pos);
  home = field(body, len, &pos);
  shell = field(body, len, &pos);
  if (!shell || pos != len || !*user || !*home || !number(suid, &uid) || !number(sgid, &gid))
    qs_die(111, "malformed auth answer from qmailsqld at ", qs_socket_path(), (char *)0);
  if (uid == 0) qs_die(1, "refusing to log in ", user, " as uid 0", (char *)0);
  if (!*shell) shell = "/bin/sh";

  if (getuid() != (uid_t)uid || geteuid() != (uid_t)uid) {
    gid_t g = (gid_t)gid;
    if (setgroups(1, &g) == -1) qs_die(111, "setgroups failed: ", strerror(errno), (char *)0);
    if (setgid(g) == -1) qs_die(111, "setgid failed: ", strerror(errno), (char *)0);
    if (setuid((uid_t)uid) == -1) qs_die(111, "setuid failed: ", strerror(errno), (char *)0);
  }
  if (chdir(home) == -1) qs_die(111, "unable to chdir to ", home, ": ", strerror(errno), (char *)0);
  if (setenv("USER", user, 1) == -1 || setenv("HOME", home, 1) == -1 ||
      setenv("SHELL", shell, 1) == -1)
    qs_die(111, "out of memory setting USER, HOME, SHELL", (char *)0);
  execvp(argv[1], argv + 1);
  qs_die(111, "unable to run ", argv[1], ": ", strerror(errno), (char *)0);
}
