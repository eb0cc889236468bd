/* lspawn_harness: a cost model of qmail-lspawn's local delivery (bench/delivery.py).
 *
 *   lspawn_harness [-p uid:gid] QMAILDIR MESSAGE COUNT LOCAL...
 *   lspawn_harness -f COUNT PROGRAM [ARG...]
 *
 * COUNT deliveries, cycling through the LOCALs, each done the way qmail-lspawn(8)
 * does one: fork; in the child chdir(QMAILDIR) and look LOCAL up in users/cdb
 * (qmail-users(5): the key "!local\0", then "!prefix" for the wildcard entries);
 * if it is not there, fork+exec bin/qmail-getpw LOCAL with stdout on a pipe (as
 * uid:gid of -p, qmail-lspawn's qmailp) and read its six fields; then exec
 * bin/qmail-local -- user homedir local dash ext domain sender aliasempty as the
 * mailbox's uid and gid, with MESSAGE on fd 0 and fds 1 and 2 on a report pipe
 * that the harness reads to EOF before it waits for the child.
 * -f: fork, exec PROGRAM ARG... with stdout on /dev/null, wait, COUNT times (the
 * price of one program start, or of one run of a helper on its own).
 *
 * Prints "count self_ns children_ns wall_ns": the CPU time (user + system) of the
 * harness itself and of all its children, and the elapsed time. Exit 0 when every
 * run exited 0; else 111, with the first failing status and report on stderr. */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DOMAIN "example.org"
#define SENDER "bench@example.net"
#define ALIASEMPTY "./Maildir/"
#define ANSWER 4096
/* qmail-lspawn's exit codes for its own trouble (qmail-command(8) reports them) */
#define QLX_USAGE 112
#define QLX_ROOT 113
#define QLX_CDB 117
#define QLX_SYS 118
#define QLX_EXECPW 121

static uid_t pw_uid;
static gid_t pw_gid;
static int pw_set;

static uint32_t u32(const unsigned char *p)
{
  return p[0] | p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* cr.yp.to/cdb/cdb.txt: 1 and the data in BUF (up to MAX bytes) when KEY is in
 * the cdb on FD, 0 when it is not, -1 on a read error or a broken file */
static int cdb_get(int fd, const char *key, size_t klen, char *buf, size_t max, size_t *dlen)
{
  unsigned char head[8], slot[8], rec[8];
  char k[ANSWER];
  uint32_t h = 5381, pos, slots, s, i;

  for (i = 0; i < klen; i++) h = ((h << 5) + h) ^ (unsigned char)key[i];
  if (pread(fd, head, 8, (h & 255) * 8) != 8) return -1;
  pos = u32(head);
  slots = u32(head + 4);
  for (i = 0, s = slots ? (h >> 8) % slots : 0; i < slots; i++, s = (s + 1) % slots) {
    if (pread(fd, slot, 8, pos + 8 * s) != 8) return -1;
    if (!u32(slot + 4)) return 0;
    if (u32(slot) != h) continue;
    if (pread(fd, rec, 8, u32(slot + 4)) != 8) return -1;
    if (u32(rec) != klen) continue;
    if (klen > sizeof k || u32(rec + 4) > max) return -1;
    if (pread(fd, k, klen, u32(slot + 4) + 8) != (ssize_t)klen) return -1;
    if (memcmp(k, key, klen)) continue;
    *dlen = u32(rec + 4);
    return pread(fd, buf, *dlen, u32(slot + 4) + 8 + klen) == (ssize_t)*dlen ? 1 : -1;
  }
  return 0;
}

/* 1 with the six fields in ANSWER if users/cdb has LOCAL, 0 if not (or no file) */
static int users_cdb(const char *local, char *answer, size_t *len)
{
  char key[ANSWER], wild[256];
  size_t n = strlen(local), wlen, i;
  int fd = open("users/cdb", O_RDONLY), r;

  if (fd == -1) {
    if (errno == ENOENT) return 0;
    _exit(QLX_CDB);
  }
  if (n + 2 > sizeof key || cdb_get(fd, "", 0, wild, sizeof wild, &wlen) != 1) _exit(QLX_CDB);
  key[0] = '!';
  for (i = 0; i < n; i++) key[i + 1] = (local[i] >= 'A' && local[i] <= 'Z') ? local[i] + 32 : local[i];
  key[n + 1] = 0;
  r = cdb_get(fd, key, n + 2, answer, ANSWER - n - 2, len); /* "!local\0" */
  for (i = n + 1; r == 0 && i > 0; i--)                     /* "!prefix" */
    if (i == 1 || memchr(wild, key[i - 1], wlen)) {
      r = cdb_get(fd, key, i, answer, ANSWER - n - 2, len);
      if (r == 1) { /* the rest of the local part becomes the end of ext */
        memcpy(answer + *len, local + i - 1, n - (i - 1));
        *len += n - (i - 1);
      }
    }
  if (r < 0) _exit(QLX_CDB);
  close(fd);
  answer[(*len)++] = 0;
  return r;
}

/* bin/qmail-getpw LOCAL's answer into ANSWER; its exit code, if not 0, ends the child */
static void getpw(const char *local, char *answer, size_t *len)
{
  int pi[2], st;
  ssize_t r;
  pid_t pid;

  if (pipe(pi)) _exit(QLX_SYS);
  pid = fork();
  if (pid == -1) _exit(QLX_SYS);
  if (pid == 0) {
    char *args[3] = {"bin/qmail-getpw", (char *)local, 0};
    if (pw_set && (setgroups(1, &pw_gid) || setgid(pw_gid) || setuid(pw_uid))) _exit(QLX_USAGE);
    close(pi[0]);
    if (dup2(pi[1], 1) != 1) _exit(QLX_SYS);
    execv(args[0], args);
    _exit(QLX_EXECPW);
  }
  close(pi[1]);
  for (*len = 0; *len < ANSWER; *len += r) {
    r = read(pi[0], answer + *len, ANSWER - *len);
    if (r == -1 && errno == EINTR) { r = 0; continue; }
    if (r <= 0) break;
  }
  close(pi[0]);
  if (waitpid(pid, &st, 0) != pid || WIFSIGNALED(st)) _exit(QLX_SYS);
  if (WEXITSTATUS(st)) _exit(WEXITSTATUS(st));
}

/* the spawn child: find the mailbox, become its owner, exec qmail-local */
static void deliver(const char *qmaildir, const char *local, int msg, int report)
{
  static char answer[ANSWER];
  char *f[6], *args[11];
  size_t len = 0, i, k = 0;
  uid_t uid;
  gid_t gid;

  if (chdir(qmaildir)) _exit(QLX_USAGE);
  if (!users_cdb(local, answer, &len)) getpw(local, answer, &len);
  for (i = 0; i < len && k < 6; i++)
    if (i == 0 || !answer[i - 1]) f[k++] = answer + i;
  if (k < 6 || answer[len - 1]) _exit(QLX_USAGE);
  uid = strtoul(f[1], 0, 10);
  gid = strtoul(f[2], 0, 10);
  if (dup2(msg, 0) != 0 || dup2(report, 1) != 1 || dup2(1, 2) != 2) _exit(QLX_SYS);
  if (getuid() == 0 && (setgroups(1, &gid) || setgid(gid) || setuid(uid))) _exit(QLX_USAGE);
  if (getuid() == 0) _exit(QLX_ROOT);
  args[0] = "bin/qmail-local";
  args[1] = "--";
  args[2] = f[0];
  args[3] = f[3];
  args[4] = (char *)local;
  args[5] = f[4];
  args[6] = f[5];
  args[7] = DOMAIN;
  args[8] = SENDER;
  args[9] = ALIASEMPTY;
  args[10] = 0;
  execv(args[0], args);
  _exit(111);
}

static long long ns(struct timeval tv)
{
  return (long long)tv.tv_sec * 1000000000LL + tv.tv_usec * 1000LL;
}

static long long now(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int usage(void)
{
  fprintf(stderr, "usage: lspawn_harness [-p uid:gid] QMAILDIR MESSAGE COUNT LOCAL...\n"
                  "       lspawn_harness -f COUNT PROGRAM [ARG...]\n");
  return 100;
}

int main(int argc, char **argv)
{
  static char report[4096];
  struct rusage self, kids;
  long long t0;
  int opt, count, i, st, floor = 0, failed = 0, null = open("/dev/null", O_WRONLY);

  while ((opt = getopt(argc, argv, "+p:f")) != -1) {
    if (opt == 'f') floor = 1;
    else if (opt == 'p' && sscanf(optarg, "%u:%u", &pw_uid, &pw_gid) == 2) pw_set = 1;
    else return usage();
  }
  argv += optind;
  argc -= optind;
  if (argc < (floor ? 2 : 4)) return usage();
  count = atoi(floor ? argv[0] : argv[2]);
  t0 = now();
  for (i = 0; i < count; i++) {
    int pi[2] = {-1, -1}, msg = -1;
    size_t len = 0;
    ssize_t r;
    pid_t pid;
    if (!floor) {
      const char *local = argv[3 + i % (argc - 3)];
      msg = open(argv[1], O_RDONLY);
      if (msg == -1 || pipe(pi)) { perror("lspawn_harness: message or pipe"); return 111; }
      pid = fork();
      if (pid == 0) {
        close(pi[0]);
        deliver(argv[0], local, msg, pi[1]);
      }
      close(pi[1]);
      close(msg);
      while ((r = read(pi[0], report + len, sizeof report - 1 - len)) != 0)
        if (r > 0) len += r;
        else if (errno != EINTR || len == sizeof report - 1) break;
      close(pi[0]);
    } else {
      pid = fork();
      if (pid == 0) {
        dup2(null, 1);
        execv(argv[1], argv + 1);
        _exit(127);
      }
    }
    if (pid == -1 || waitpid(pid, &st, 0) != pid) { perror("lspawn_harness: fork"); return 111; }
    if ((!WIFEXITED(st) || WEXITSTATUS(st)) && !failed++) {
      report[len] = 0;
      fprintf(stderr, "lspawn_harness: run %d (%s) ended with status %d: %s\n", i,
              floor ? argv[1] : argv[3 + i % (argc - 3)],
              WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st), report);
    }
  }
  t0 = now() - t0;
  getrusage(RUSAGE_SELF, &self);
  getrusage(RUSAGE_CHILDREN, &kids);
  printf("%d %lld %lld %lld\n", count, ns(self.ru_utime) + ns(self.ru_stime),
         ns(kids.ru_utime) + ns(kids.ru_stime), t0);
  return failed ? 111 : 0;
}
