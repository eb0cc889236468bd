/* A stand-in for the stock qmail-local (bench/delivery.py; there is no qmail here).
 *
 *   qmail-local -- user homedir local dash ext domain sender aliasempty
 *
 * It does the part of a stock delivery that every mode of the bench shares: chdir
 * to homedir, then deliver the message on fd 0 to the maildir that aliasempty
 * names (`./Maildir/`) the way stock qmail-local does: Return-Path and Delivered-To
 * first, the file written in tmp/ (fsync'd when STANDIN_FSYNC is set), then moved
 * into new/. No .qmail files, no forwards, no programs: what stock qmail-local does
 * beyond this costs the same whoever ran it. Exit 0 and "did 0+0+1/" on stdout; 111
 * with a reason when the delivery fails (the message would stay queued). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/utsname.h>
#include <unistd.h>

static void die(const char *what)
{
  printf("Z%s: %s\n", what, strerror(errno));
  exit(111);
}

int main(int argc, char **argv)
{
  static char buf[65536], tmp[4096], new[4096];
  const char *maildir;
  struct utsname u;
  struct timeval tv;
  ssize_t r;
  int fd, n;

  if (argc != 10 || strcmp(argv[1], "--")) {
    printf("Dstand-in usage: qmail-local -- user homedir local dash ext domain sender "
           "aliasempty\n");
    return 100;
  }
  maildir = argv[9];
  if (maildir[0] != '.' && maildir[0] != '/') {
    printf("Dthe stand-in delivers to a maildir line only, not %s\n", maildir);
    return 100;
  }
  if (chdir(argv[3])) die("unable to chdir to the home directory");
  gettimeofday(&tv, 0);
  uname(&u);
  n = snprintf(tmp, sizeof tmp, "%stmp/%ld.M%ldP%d.%s", maildir, (long)tv.tv_sec,
               (long)tv.tv_usec, (int)getpid(), u.nodename);
  if (n <= 0 || n >= (int)sizeof tmp) die("maildir path too long");
  snprintf(new, sizeof new, "%snew/%s", maildir, tmp + strlen(maildir) + 4);
  fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL, 0600);
  if (fd == -1) die("unable to open tmp/ file");
  n = snprintf(buf, sizeof buf, "Return-Path: <%s>\nDelivered-To: %s@%s\n", argv[8], argv[4],
               argv[7]);
  if (n <= 0 || n >= (int)sizeof buf || write(fd, buf, n) != n) die("unable to write");
  while ((r = read(0, buf, sizeof buf)) != 0) {
    if (r < 0) {
      if (errno == EINTR) continue;
      die("unable to read the message");
    }
    if (write(fd, buf, r) != r) die("unable to write");
  }
  if (getenv("STANDIN_FSYNC") && fsync(fd)) die("unable to fsync");
  if (close(fd)) die("unable to close");
  if (rename(tmp, new)) die("unable to move the message into new/");
  printf("did 0+0+1/\n");
  return 0;
}
