"""What a Maildir++ quota adds to a delivery through the qmail-local wrapper.

    python bench/quota.py [--runs 300] [--messages 100000]

Brings up a sandbox (private MariaDB + qmailsqld), three mailboxes of one uid and
times the compiled qmail-local wrapper, run as that uid with the message file on
fd 0 as qmail-lspawn gives it, medians in milliseconds:

  plain_ms        no quota: the wrapper execs stock qmail-local (today's path)
  quota_small_ms  quota, a Maildir of a few messages: lock, read maildirsize, run
                  stock qmail-local as a child, append one line
  quota_big_ms    the same with a Maildir of --messages messages (most named with
                  ,S=, a tenth without, so a recount must stat() those)
  recalc_big_ms   the big Maildir with its maildirsize removed first: the
                  recalculation that the Maildir++ rules do now and then (missing,
                  5120 bytes, a changed limit, an over-quota verdict to confirm)

Stock qmail-local is bench/exec_floor.c (static, does nothing), so the wrapper's own
cost is what is measured; `*_writer_ms` repeat plain and quota_small with
bench/maildir_writer.c, which writes the message into the Maildir (fsync) as stock
does. Ratios: quota_small_ratio and quota_big_ratio (over plain_ms), and
big_over_small (quota_big_ms / quota_small_ms: ~1 when the cost does not grow with
the Maildir). The cases run interleaved, ten runs at a time. Each measure also has
a `_p10_ms` (the fastest tenth), and each ratio a `_p10` twin: on a loaded machine
they show the cost with less of the other load in it. The last line is JSON.
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys

import benchlib
import latency  # its fork/exec/wait timer
import qmailsql
from qmailsql.sandbox import host as sandbox

UID, GID = 800, 100
MESSAGE = b"From: a@example.net\nSubject: bench\n\n" + b"x" * 3000 + b"\n"


def maildir(home, messages):
    md = home / "Maildir"
    for sub in ("tmp", "new", "cur"):
        (md / sub).mkdir(parents=True, exist_ok=True)
    cur = md / "cur"
    for i in range(messages):
        name = ("1700000000.M%dP1.bench,S=%d:2,S" % (i, 2048 + i % 977) if i % 10
                else "1700000000.M%dP1.bench:2,S" % i)
        os.close(os.open(cur / name, os.O_CREAT | os.O_WRONLY, 0o600))
    subprocess.run(["chown", "-R", "%d:%d" % (UID, GID), str(home)], check=True)
    return md


def measure(args, work, root):
    env = dict(os.environ)  # with the sandbox's exports (benchlib.sandbox_up)
    homes = root / "home"
    homes.mkdir()
    os.chmod(homes, 0o755)
    with qmailsql.connect(str(root)) as q:  # the sandbox's administrator
        for name, size in (("plain", None), ("small", 10 ** 12), ("big", 10 ** 12)):
            q.directory.query(
                "INSERT INTO mailbox (username, uid, gid, home, password, password_type, "
                "quota_size) VALUES (%s,%s,%s,%s,'x','Password',%s)",
                (name, UID, GID, str(homes / name), size), write=True)
    mds = {"plain": maildir(homes / "plain", 5), "small": maildir(homes / "small", 5),
           "big": maildir(homes / "big", args.messages)}
    msg = work / "message"
    msg.write_bytes(MESSAGE)
    local = sandbox.Paths(root).bin / "qmail-local"
    floor = dict(env, QMAILSQL_QMAIL_LOCAL=str(work / "exec_floor"))
    writer = dict(env, QMAILSQL_QMAIL_LOCAL=str(work / "maildir_writer"))

    def argv(name):
        return [local, "--", name, homes / name, name, "", "", "example.org",
                "sender@example.org", "./Maildir/"]

    def run(name, e, runs):
        out = latency.timed(work, argv(name), runs, e, stdin=msg, user=UID, group=GID,
                            extra_groups=[])
        bad = [s for s, _ in out if s]
        if bad:
            raise SystemExit("bench: the wrapper for %s exited %d" % (name, bad[0]))
        return [ms for _, ms in out]

    cases = [("plain_ms", "plain", floor), ("quota_small_ms", "small", floor),
             ("quota_big_ms", "big", floor), ("plain_writer_ms", "plain", writer),
             ("quota_small_writer_ms", "small", writer)]
    for _, name, e in cases:  # warm-up: daemon cache, maildirsize recalculated once
        run(name, e, args.warmup)
    samples = {key: [] for key, _, _ in cases}
    rounds = max(1, args.runs // 10)
    order = random.Random(1)
    for _ in range(rounds):  # finely interleaved, so load from elsewhere hits every case alike
        for key, name, e in order.sample(cases, len(cases)):  # and no case always follows another
            samples[key] += run(name, e, max(1, args.runs // rounds))
            # stay below the 5120 bytes that force a recalculation: that is measured
            # on its own below
            if len((mds[name] / "maildirsize").read_bytes() if name != "plain" else b"") > 4000:
                (mds[name] / "maildirsize").unlink()
                run(name, e, 1)
    recalc = []
    for _ in range(args.recalc_runs):
        (mds["big"] / "maildirsize").unlink()
        recalc += run("big", floor, 1)
    result = {key: round(statistics.median(v), 4) for key, v in samples.items()}
    for key, v in samples.items():  # the fast tenth: less of the machine's other load
        result[key[:-3] + "_p10_ms"] = round(statistics.quantiles(v, n=10)[0], 4)
    result["recalc_big_ms"] = round(statistics.median(recalc), 4)
    result["messages_big"] = args.messages
    return result, {k: len(v) for k, v in samples.items()}, len(recalc)


def report(result, counts, nrecalc):
    def ratio(a, b):
        return round(result[a] / result[b], 3)
    for p in ("", "_p10"):
        result["quota_small_ratio" + p] = ratio("quota_small%s_ms" % p, "plain%s_ms" % p)
        result["quota_big_ratio" + p] = ratio("quota_big%s_ms" % p, "plain%s_ms" % p)
        result["big_over_small" + p] = ratio("quota_big%s_ms" % p, "quota_small%s_ms" % p)
        result["writer_ratio" + p] = ratio("quota_small_writer%s_ms" % p, "plain_writer%s_ms" % p)
    rows = [("plain_ms", "no quota: exec stock (exec_floor)"),
            ("quota_small_ms", "quota, 5-message Maildir"),
            ("quota_big_ms", "quota, %d-message Maildir" % result["messages_big"]),
            ("recalc_big_ms", "quota, %d-message Maildir, maildirsize recalculated"
             % result["messages_big"]),
            ("plain_writer_ms", "no quota, stock = Maildir writer (fsync)"),
            ("quota_small_writer_ms", "quota, stock = Maildir writer (fsync)")]
    print("%-22s %10s %8s %6s  %s" % ("measure", "median ms", "p10 ms", "runs", "what"))
    for key, what in rows:
        n = nrecalc if key == "recalc_big_ms" else counts.get(key, 0)
        p10 = result.get(key[:-3] + "_p10_ms")
        print("%-22s %10.3f %8s %6d  %s" % (key, result[key], "%.3f" % p10 if p10 else "",
                                            n, what))
    for p, what in (("", "medians"), ("_p10", "fast tenths")):
        print("ratios of the %s: quota_small/plain = %s, quota_big/plain = %s, big/small = "
              "%s, with the writer = %s" % (what, result["quota_small_ratio" + p],
                                            result["quota_big_ratio" + p],
                                            result["big_over_small" + p],
                                            result["writer_ratio" + p]))
    print(json.dumps(result))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=300, help="timed runs per case (default 300)")
    p.add_argument("--warmup", type=int, default=20, help="untimed runs first (default 20)")
    p.add_argument("--messages", type=int, default=100000,
                   help="messages in the big Maildir (default 100000)")
    p.add_argument("--recalc-runs", type=int, default=10,
                   help="timed recalculations of the big Maildir (default 10)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench: run as root (the wrapper runs as the mailbox's uid %d)" % UID)
    with benchlib.scratch() as work, benchlib.sandbox_up() as (root, _):
        (work / "timer.c").write_text(latency.TIMER_C)
        benchlib.cc(work / "timer", [work / "timer.c"])
        benchlib.cc(work / "exec_floor", [benchlib.HERE / "exec_floor.c"], static=True)
        benchlib.cc(work / "maildir_writer", [benchlib.HERE / "maildir_writer.c"], static=True)
        result, counts, nrecalc = measure(args, work, root)
    report(result, counts, nrecalc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
