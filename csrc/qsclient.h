/* qsclient: the shared part of the qmailsql helpers (see PROTOCOL.md).
 *
 * One request, one response, then the program decides. All buffers are static;
 * every kind of trouble ends in exit 111 with one line on stderr. */
#ifndef QSCLIENT_H
#define QSCLIENT_H

#include <stddef.h>

#ifndef QMAIL_DIR
#define QMAIL_DIR "/var/qmail"
#endif

#define QS_SOCKET_DEFAULT QMAIL_DIR "/qmailsql/qmailsqld.sock"
#define QS_MAX_PAYLOAD 65536   /* both directions */
#ifndef QS_TIMEOUT_S
#define QS_TIMEOUT_S 60        /* whole exchange, connect to last byte */
#endif
#define QS_STRING(x) QS_STRING_(x)
#define QS_STRING_(x) #x

/* The deferral answer (PROTOCOL.md). qmail-lspawn runs qmail-getpw with no usable
 * stderr, so a reason written there never reaches qmail-send's log. With
 * qs_defer_fd set, qs_die() with a temporary status answers six fields on that fd
 * instead and exits 0: user QS_DEFER_USER, this process's own uid and gid, home
 * QS_DEFER_HOME followed by the reason, dash and ext empty. qmail-lspawn then runs
 * bin/qmail-local as this unprivileged uid with fd 2 on its report pipe: the wrapper
 * prints the reason and exits 111; a stock qmail-local cannot chdir into a path
 * under /dev/null and exits 111 too ("Unable to switch to ..."). */
#define QS_DEFER_USER "qmailsql-deferral"
#define QS_DEFER_HOME "/dev/null/qmailsql-deferral/"
extern int qs_defer_fd;  /* -1 (the default): messages go to stderr */

/* the name put in front of every message; set it first thing in main() */
extern const char *qs_prog;

/* env QMAILSQL_SOCKET if set and non-empty, else QS_SOCKET_DEFAULT */
const char *qs_socket_path(void);

/* build a request: qs_begin("getpw"); qs_arg(local); ... */
void qs_begin(const char *command);
void qs_arg(const char *s);

/* send the request, read the response. Returns the status (0..255); *body
 * points at the body, which is followed by an extra NUL, *bodylen its length.
 * Any trouble (connect, timeout, short or malformed frame, too long): exit 111. */
int qs_call(char **body, size_t *bodylen);

/* overwrite the request buffer (it may hold a password) */
void qs_wipe_request(void);
void qs_wipe(void *p, size_t n);

/* write "qs_prog: " + strings (until NULL) + "\n" to stderr */
void qs_warn(const char *s, ...);
/* the same, then _exit(code); but with qs_defer_fd set and a temporary CODE (111,
 * or 115 as stock qmail-getpw's), the deferral answer instead */
void qs_die(int code, const char *s, ...) __attribute__((noreturn));
/* a non-zero status from the daemon: print "qs_prog: body" (first line of the
 * body, control bytes replaced; a generic line when empty and status != 1),
 * then _exit(status) */
void qs_die_status(int status, const char *body, size_t bodylen) __attribute__((noreturn));

/* write all of buf; 0 on success, -1 on error */
int qs_writeall(int fd, const char *buf, size_t len);

#endif
