/* maildirsize: Maildir++ quota accounting (Courier's README.maildirquota; the same
 * file Dovecot's `quota = maildir` reads and writes). Rules: qmailsql/quota.py. */
#ifndef MAILDIRSIZE_H
#define MAILDIRSIZE_H

#define MDS_RECALC_BYTES 5120   /* a maildirsize this long is recalculated */
#define MDS_STALE_SECONDS 900   /* an over-quota verdict older than this is recounted */

struct mds {
  long long limit_bytes, limit_count;  /* 0: no limit of that kind */
  long long bytes, count;              /* usage */
  int fd;                              /* MAILDIR/maildirsize, O_APPEND, or -1 */
};

/* what the last failing call was working on (a path), for the error message */
extern const char *mds_failed;

/* an exclusive lock on MAILDIR/.qmailsql.lock, held until exit (close-on-exec),
 * so that no recalculation of ours counts a delivery in progress. Waits at most
 * SECONDS. 0 ok, -1 error (errno; EINTR: timed out) */
int mds_lock(const char *maildir, unsigned seconds);

/* read MAILDIR/maildirsize for a delivery of ADD_BYTES in ADD_COUNT messages and
 * recalculate it where the specification says so. m->limit_* must be set.
 * 0 ok (m->bytes, m->count, m->fd set), -1 error (errno) */
int mds_open(struct mds *m, const char *maildir, long long add_bytes, long long add_count);

/* 1 when adding ADD_BYTES in ADD_COUNT messages goes over a limit */
int mds_over(const struct mds *m, long long add_bytes, long long add_count);

/* record a change with one write(2) on the O_APPEND descriptor; 0 ok, -1 error */
int mds_add(struct mds *m, long long bytes, long long count);

/* use of the fuller limit, in percent */
double mds_percent(const struct mds *m);

#endif
