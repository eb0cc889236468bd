/* request_load: cached-request load on one connection to qmailsqld (bench/latency.py,
   bench/dispatch.py).

     request_load SOCKET COUNT SECONDS BATCH FIELD...

   Sends the request of the FIELDs, BATCH frames per write, then reads the BATCH
   answers (each must have status 0), until COUNT requests are answered or SECONDS
   have passed. Prints "count elapsed_ns". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static long long now(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
  struct sockaddr_un sa;
  static char req[65536], resp[1 << 20];
  char one[8192];
  int fd, i, k, plen = 0, len, total;
  long n, batch, done = 0;
  long long t0, end;
  if (argc < 6) return 100;
  n = atol(argv[2]);
  batch = atol(argv[4]);
  for (i = 5; i < argc; i++) {
    k = (int)strlen(argv[i]) + 1;
    if (plen + k > (int)sizeof one) return 100;
    memcpy(one + plen, argv[i], k);
    plen += k;
  }
  len = snprintf(req, sizeof req, "%d:", plen);
  memcpy(req + len, one, plen);
  len += plen;
  req[len++] = ',';
  if (batch < 1 || batch * len > (long)sizeof req) return 100;
  for (i = 1; i < batch; i++) memcpy(req + i * len, req, len);
  total = (int)(batch * len);
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  strncpy(sa.sun_path, argv[1], sizeof sa.sun_path - 1);
  fd = socket(AF_UNIX, SOCK_STREAM, 0);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa)) { perror("connect"); return 111; }
  t0 = now();
  end = t0 + (long long)(atof(argv[3]) * 1e9);
  while (done < n && now() < end) {
    long want = batch, got = 0, pos = 0;
    if (write(fd, req, total) != total) { perror("write"); return 111; }
    while (want > 0) {  /* read until BATCH whole answers are in */
      long flen = 0, j = pos;
      while (j < got && resp[j] != ':') flen = flen * 10 + resp[j++] - '0';
      if (j < got && got >= j + 1 + flen + 1) {
        if (resp[j + 1] != '0' || resp[j + 2] != 0 || resp[j + 1 + flen] != ',') {
          fprintf(stderr, "bad response\n");
          return 111;
        }
        pos = j + 1 + flen + 1;
        want--;
        continue;
      }
      k = (int)read(fd, resp + got, sizeof resp - got);
      if (k <= 0) { perror("read"); return 111; }
      got += k;
    }
    done += batch;
  }
  printf("%ld %lld\n", done, now() - t0);
  return 0;
}
