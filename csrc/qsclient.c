/* qsclient.c: talk to qmailsqld over its unix socket (protocol: PROTOCOL.md). */
#include "qsclient.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

const char *qs_prog = "qmailsql";

#define HDR 12 /* room for "65536:" in front of the request payload */

static char req[HDR + QS_MAX_PAYLOAD + 1];
static size_t reqlen;      /* payload bytes so far */
static int reqoverflow;
static char resp[16 + QS_MAX_PAYLOAD + 2];

/* ---- output ---- */

int qs_writeall(int fd, const char *buf, size_t len)
{
  while (len) {
    ssize_t w = write(fd, buf, len);
    if (w == -1) {
      if (errno == EINTR) continue;
      return -1;
    }
    buf += w;
    len -= (size_t)w;
  }
  return 0;
}

static char msg[1024];
static size_t msglen;

static void msg_add(const char *s, size_t n)
{
  if (n > sizeof msg - 1 - msglen) n = sizeof msg - 1 - msglen;
  memcpy(msg + msglen, s, n);
  msglen += n;
}

int qs_defer_fd = -1;

/* msg = "qs_prog: " + strings + "\n" */
static void vformat(const char *s, va_list ap)
{
  msglen = 0;
  msg_add(qs_prog, strlen(qs_prog));
  msg_add(": ", 2);
  for (; s; s = va_arg(ap, const char *)) msg_add(s, strlen(s));
  msg[msglen++] = '\n';
}

static char *field(char *p, const char *s, size_t n)
{
  memcpy(p, s, n);
  p[n] = 0;
  return p + n + 1;
}

static char *number(char *p, unsigned long u)
{
  char digits[24];
  size_t n = sizeof digits;
  do digits[--n] = (char)('0' + u % 10); while (u /= 10);
  return field(p, digits + n, sizeof digits - n);
}

/* the deferral answer (qsclient.h) carrying msg; never returns */
static void defer_answer(void)
{
  static char out[sizeof QS_DEFER_USER + 2 * 24 + sizeof QS_DEFER_HOME + sizeof msg + 2];
  char *p = out, *reason;

  p = field(p, QS_DEFER_USER, sizeof QS_DEFER_USER - 1);
  p = number(p, (unsigned long)getuid());
  p = number(p, (unsigned long)getgid());
  memcpy(p, QS_DEFER_HOME, sizeof QS_DEFER_HOME - 1);
  reason = p += sizeof QS_DEFER_HOME - 1;
  p = field(p, msg, msglen - 1); /* the home: prefix + msg without its newline */
  for (; reason < p - 1; reason++)
    if ((unsigned char)*reason < 32) *reason = '?';
  p = field(p, "", 0);
  p = field(p, "", 0);
  _exit(qs_writeall(qs_defer_fd, out, (size_t)(p - out)) ? 111 : 0);
}

void qs_warn(const char *s, ...)
{
  va_list ap;
  va_start(ap, s);
  vformat(s, ap);
  va_end(ap);
  qs_writeall(2, msg, msglen);
}

void qs_die(int code, const char *s, ...)
{
  va_list ap;
  va_start(ap, s);
  vformat(s, ap);
  va_end(ap);
  if (qs_defer_fd != -1 && (code == 111 || code == 115)) defer_answer();
  qs_writeall(2, msg, msglen);
  _exit(code);
}

void qs_die_status(int status, const char *body, size_t bodylen)
{
  static char line[1024];
  size_t i, n = 0;
  char num[4];

  for (i = 0; i < bodylen && body[i] && n < sizeof line - 1; i++) {
    unsigned char c = (unsigned char)body[i];
    if (c == '\n') break;
    line[n++] = (c < 32 || c == 127) ? '?' : (char)c;
  }
  line[n] = 0;
  if (n) qs_die(status, line, (char *)0);
  if (status == 1) _exit(1);
  num[0] = (char)('0' + status / 100);
  num[1] = (char)('0' + status / 10 % 10);
  num[2] = (char)('0' + status % 10);
  num[3] = 0;
  qs_die(status, "qmailsqld answered status ", num + (status < 10 ? 2 : status < 100 ? 1 : 0),
         " without a reason", (char *)0);
}

void qs_wipe(void *p, size_t n)
{
  volatile char *v = p;
  while (n--) *v++ = 0;
}

void qs_wipe_request(void)
{
  qs_wipe(req, sizeof req);
  reqlen = 0;
}

/* ---- request ---- */

const char *qs_socket_path(void)
{
  const char *s = getenv("QMAILSQL_SOCKET");
  return (s && *s) ? s : QS_SOCKET_DEFAULT;
}

void qs_begin(const char *command)
{
  reqlen = 0;
  reqoverflow = 0;
  qs_arg(command);
}

void qs_arg(const char *s)
{
  size_t n = strlen(s) + 1;
  if (reqoverflow || n > QS_MAX_PAYLOAD - reqlen) {
    reqoverflow = 1;
    return;
  }
  memcpy(req + HDR + reqlen, s, n);
  reqlen += n;
}

/* ---- exchange ---- */

static long long deadline;

static long long now_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void trouble(const char *what, const char *detail)
{
  qs_die(111, what, " qmailsqld at ", qs_socket_path(),
         detail ? ": " : "", detail ? detail : "", (char *)0);
}

static void timed_out(void)
{
  trouble("timed out after " QS_STRING(QS_TIMEOUT_S) " s talking to", 0);
}

/* wait for events on fd until the deadline; dies on timeout */
static void await(int fd, short events)
{
  for (;;) {
    struct pollfd p;
    long long left = deadline - now_ms();
    int r;
    if (left <= 0) timed_out();
    p.fd = fd;
    p.events = events;
    p.revents = 0;
    r = poll(&p, 1, left > 1000000 ? 1000000 : (int)left);
    if (r > 0) return;
    if (r == -1 && errno != EINTR) trouble("cannot poll socket of", strerror(errno));
  }
}

static int dial(void)
{
  const char *path = qs_socket_path();
  struct sockaddr_un sa;
  size_t n = strlen(path);
  int fd;

  if (n >= sizeof sa.sun_path)
    qs_die(111, "socket path ", path, " is too long for a unix socket; set QMAILSQL_SOCKET to a shorter path",
           (char *)0);
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  memcpy(sa.sun_path, path, n + 1);

  fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd == -1) trouble("cannot create a socket to reach", strerror(errno));
  for (;;) {
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) return fd;
    if (errno == EINTR) continue;
    if (errno == EINPROGRESS) { /* not usual for AF_UNIX, but allowed */
      int err = 0;
      socklen_t el = sizeof err;
      await(fd, POLLOUT);
      if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) == -1) err = errno;
      if (!err) return fd;
      errno = err;
    }
    if (errno == EAGAIN) { /* listen backlog full: the daemon is busy; retry */
      if (now_ms() >= deadline) timed_out();
      poll(0, 0, 10);
      continue;
    }
    qs_die(111, "cannot reach qmailsqld at ", path, ": ", strerror(errno),
           "; is the daemon running? (qmailsql doctor)", (char *)0);
  }
}

int qs_call(char **body, size_t *bodylen)
{
  char *frame;
  size_t framelen, got, want, hdrlen, len, i;
  int fd, status;

  deadline = now_ms() + QS_TIMEOUT_S * 1000LL;
  if (reqoverflow)
    qs_die(111, "request longer than 65536 bytes; refusing to send it", (char *)0);

  /* netstring: decimal length, ':', payload, ',' */
  frame = req + HDR;
  req[HDR + reqlen] = ',';
  *--frame = ':';
  len = reqlen;
  do { *--frame = (char)('0' + len % 10); len /= 10; } while (len);
  framelen = (size_t)(req + HDR + reqlen + 1 - frame);

  fd = dial();
  got = 0;
  while (got < framelen) {
    ssize_t w = send(fd, frame + got, framelen - got, MSG_NOSIGNAL);
    if (w >= 0) { got += (size_t)w; continue; }
    if (errno == EINTR) continue;
    if (errno == EAGAIN) { await(fd, POLLOUT); continue; }
    trouble("cannot send the request to", strerror(errno));
  }

  /* read "len:" then len bytes then ',' */
  got = 0;
  want = 0;   /* 0 = header not complete yet */
  hdrlen = 0;
  for (;;) {
    ssize_t r;
    if (want && got >= want) break;
    r = read(fd, resp + got, (want ? want : sizeof resp - 1) - got);
    if (r == -1) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) { await(fd, POLLIN); continue; }
      trouble("cannot read the response from", strerror(errno));
    }
    if (r == 0) {
      close(fd);
      if (!got) trouble("the connection was closed without an answer by", 0);
      trouble("short response (connection closed mid-frame) from", 0);
    }
    got += (size_t)r;
    if (!want) {
      len = 0;
      for (i = 0; i < got; i++) {
        char c = resp[i];
        if (c == ':') break;
        if (c < '0' || c > '9' || i >= 6) trouble("malformed response (bad netstring length) from", 0);
        len = len * 10 + (size_t)(c - '0');
        if (len > QS_MAX_PAYLOAD) trouble("response longer than 65536 bytes from", 0);
      }
      if (i == got) continue;  /* no ':' yet (at most 6 digits by now) */
      if (i == 0) trouble("malformed response (bad netstring length) from", 0);
      hdrlen = i + 1;
      want = hdrlen + len + 1;
      if (want > sizeof resp) trouble("response longer than 65536 bytes from", 0);
      if (got > want) {
        if (resp[want - 1] != ',') trouble("malformed response (netstring not ended by a comma) from", 0);
        trouble("malformed response (bytes after the frame) from", 0);
      }
    }
  }
  close(fd);
  if (resp[want - 1] != ',') trouble("malformed response (netstring not ended by a comma) from", 0);
  resp[want - 1] = 0;

  /* payload: status "\0" body */
  frame = resp + hdrlen;
  len = want - 1 - hdrlen;
  status = 0;
  for (i = 0; i < len && frame[i]; i++) {
    if (frame[i] < '0' || frame[i] > '9' || i >= 3) trouble("malformed response (bad status) from", 0);
    status = status * 10 + (frame[i] - '0');
  }
  if (i == 0 || i == len || status > 255) trouble("malformed response (bad status) from", 0);
  *body = frame + i + 1;
  *bodylen = len - i - 1;
  return status;
}
