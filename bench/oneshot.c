/* oneshot: the benchmark baseline, built like the original (2001) qmail-mysql
 * patch's qmail-getpw: link libmariadb, connect, look up the candidates of a
 * local part one query at a time, print the six NUL-terminated fields like
 * qmail-getpw, disconnect, exit.
 *
 *   cc -O2 -o oneshot bench/oneshot.c $(mariadb_config --cflags --libs)
 *   oneshot [-h host] [-P port] [-S socket] [-u user] [-p password] [-d db] LOCAL
 *
 * Each option falls back to env ONESHOT_HOST, ONESHOT_PORT, ONESHOT_SOCKET,
 * ONESHOT_USER, ONESHOT_PASSWORD, ONESHOT_DB (db default "qmail").
 * Exit 0 found, 116 no alias user, 111 DB trouble, 100 usage. */
#include <ctype.h>
#include <mysql.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define USERLEN 32
#define AUTO_BREAK '-'
#define ALIAS_USER "alias"

static MYSQL *db;

static void die(int code, const char *what)
{
  fprintf(stderr, "oneshot: %s%s%s\n", what, db ? ": " : "", db ? mysql_error(db) : "");
  exit(code);
}

static const char *opt(const char *v, const char *env, const char *dflt)
{
  const char *e;
  if (v) return v;
  e = getenv(env);
  return (e && *e) ? e : dflt;
}

/* 1 and fills uid/gid/home if NAME is a usable mailbox, 0 if not */
static int lookup(const char *name, size_t len, char *uid, char *gid, char *home)
{
  char esc[2 * USERLEN + 1 + 2 * sizeof ALIAS_USER];
  char low[USERLEN + sizeof ALIAS_USER];
  char q[sizeof esc + 128];
  MYSQL_RES *res;
  MYSQL_ROW row;
  struct stat st;
  size_t i;
  int ok = 0;

  for (i = 0; i < len; i++) low[i] = (char)tolower((unsigned char)name[i]);
  mysql_real_escape_string(db, esc, low, (unsigned long)len);
  snprintf(q, sizeof q, "SELECT uid, gid, home FROM mailbox WHERE username = '%s'", esc);
  if (mysql_query(db, q)) die(111, "query failed");
  if (!(res = mysql_store_result(db))) die(111, "query failed");
  if ((row = mysql_fetch_row(res)) && row[0] && row[1] && row[2] && strtoul(row[0], 0, 10) != 0 &&
      stat(row[2], &st) == 0 && st.st_uid == strtoul(row[0], 0, 10)) {
    snprintf(uid, 24, "%s", row[0]);
    snprintf(gid, 24, "%s", row[1]);
    snprintf(home, 4096, "%s", row[2]);
    ok = 1;
  }
  mysql_free_result(res);
  return ok;
}

static void put(const char *s)
{
  fwrite(s, 1, strlen(s) + 1, stdout);
}

int main(int argc, char **argv)
{
  const char *host = 0, *port = 0, *sock = 0, *user = 0, *pass = 0, *dbname = 0;
  char uid[24], gid[24], home[4096], name[USERLEN + sizeof ALIAS_USER];
  const char *local, *dash = "", *ext = "";
  size_t len, i;
  int c, found = 0;

  while ((c = getopt(argc, argv, "h:P:S:u:p:d:")) != -1)
    switch (c) {
    case 'h': host = optarg; break;
    case 'P': port = optarg; break;
    case 'S': sock = optarg; break;
    case 'u': user = optarg; break;
    case 'p': pass = optarg; break;
    case 'd': dbname = optarg; break;
    default: return 100;
    }
  if (optind >= argc) {
    fprintf(stderr, "usage: oneshot [-h host] [-P port] [-S socket] [-u user] [-p password] [-d db] local\n");
    return 100;
  }
  local = argv[optind];
  host = opt(host, "ONESHOT_HOST", 0);
  port = opt(port, "ONESHOT_PORT", "0");
  sock = opt(sock, "ONESHOT_SOCKET", 0);
  user = opt(user, "ONESHOT_USER", 0);
  pass = opt(pass, "ONESHOT_PASSWORD", 0);
  dbname = opt(dbname, "ONESHOT_DB", "qmail");

  if (!(db = mysql_init(0))) die(111, "out of memory");
  if (!mysql_real_connect(db, host, user, pass, dbname, (unsigned)atoi(port), sock, 0))
    die(111, "cannot connect");

  /* candidates longest first: all of LOCAL, then each prefix before an auto_break */
  len = strlen(local);
  for (i = len + 1; i-- > 0;) {
    if (i != len && local[i] != AUTO_BREAK) continue;
    if (i == 0 || i >= USERLEN) continue;
    if (lookup(local, i, uid, gid, home)) {
      memcpy(name, local, i);
      name[i] = 0;
      for (c = 0; name[c]; c++) name[c] = (char)tolower((unsigned char)name[c]);
      if (i < len) { dash = "-"; ext = local + i + 1; }
      found = 1;
      break;
    }
  }
  if (!found) {
    if (!lookup(ALIAS_USER, strlen(ALIAS_USER), uid, gid, home)) {
      mysql_close(db);
      return 116;
    }
    strcpy(name, ALIAS_USER);
    dash = "-";
    ext = local;
  }
  mysql_close(db);
  put(name); put(uid); put(gid); put(home); put(dash); put(ext);
  if (fflush(stdout) || ferror(stdout)) return 111;
  return 0;
}
