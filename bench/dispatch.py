"""qmailsqld's CPU per cached request: the Cython hot path against QMAILSQL_PUREPYTHON=1.

    python bench/dispatch.py [--requests 100000] [--rounds 5] [--batch 16]

Brings up a sandbox with the FAQ's rows and two qmailsqld on its MariaDB, one with the
compiled hot path (core/_hot.pyx) and one with its pure-Python reference
(core/fallback.py), and sends each the same cached requests from one connection
(bench/request_load.c), in alternating rounds. What is measured is the daemon's own CPU
(/proc/PID/stat utime+stime, all its threads, before and after each load) per
request, in microseconds, median of the rounds:

  getpw              getpw iain-slowlaris from root: a privileged peer, looked up by
                     its payload before anything else
  local              the qmail-local wrapper's `local` from the mailbox's own uid (as
                     root; else our own, a privileged peer): split, command table, who
                     may ask, field count and bounds, the per-uid key, then the cache
  getpw_pipelined    getpw, --batch requests written at once: the loop's syscalls
                     shared by the batch, so the dispatch's share is larger

Each figure has its ratio python / cython. Prints a table, then one last line of
JSON. The sandbox is torn down at the end.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

import benchlib
import qmailsql
from qmailsql.sandbox import demo, host as sandbox

LOCAL = "iain-slowlaris"


def load(work, sock, requests, batch, fields, user=None):
    r = subprocess.run([str(work / "load"), sock, str(requests), "1e9", str(batch)] + fields,
                       capture_output=True, text=True, user=user, timeout=600)
    if r.returncode:
        raise SystemExit("bench: load client failed (%d): %s" % (r.returncode, r.stderr))
    return int(r.stdout.split()[0])


def cpu_us_per_request(work, daemon, requests, batch, fields, user):
    """qmailsqld DAEMON's (sock, pid) CPU microseconds per request of one load."""
    sock, pid = daemon
    load(work, sock, 1, 1, fields, user)  # the answer is in its cache now
    cpu0 = benchlib.cpu_seconds(pid)
    done = load(work, sock, requests, batch, fields, user)
    return (benchlib.cpu_seconds(pid) - cpu0) * 1e6 / done


def implementation(paths):
    """What the daemon's start line says it runs: cache=cython or cache=python."""
    start = [line for line in paths.daemon_log.read_text().split("\n") if " start " in
             " " + line][-1]
    return start.split("cache=")[1].split()[0]


def measure(args, work, root):
    uid, gid = (demo.FAQ_UID, demo.FAQ_GID) if os.geteuid() == 0 else (os.getuid(),
                                                                        os.getgid())
    with qmailsql.connect(str(root)) as q:
        demo.load_faq(q.directory, str(root / "home"), uid, gid)
    compiled = sandbox.Paths(root)
    pure = benchlib.second_home(root, work / "pure")
    sandbox.start_daemon(pure, {"QMAILSQL_PUREPYTHON": "1"})
    try:
        daemons = {}
        for name, paths in (("cython", compiled), ("python", pure)):
            found = implementation(paths)
            if found != name:
                raise SystemExit("bench: the %s daemon runs cache=%s" % (name, found))
            daemons[name] = (str(paths.daemon_socket), benchlib.pid_of(paths.daemon_pid))
        home = str(root / "home" / "iain")
        loads = {
            "getpw": (1, ["getpw", LOCAL], None),
            "local": (1, ["local", "iain", home, LOCAL, "-", "slowlaris", "example.org"],
                      uid if os.geteuid() == 0 else None),
            "getpw_pipelined": (args.batch, ["getpw", LOCAL], None),
        }
        samples = {(load_name, name): [] for load_name in loads for name in daemons}
        order = list(daemons)
        for _ in range(args.rounds):
            for load_name, (batch, fields, user) in loads.items():
                for name in order:
                    samples[(load_name, name)].append(cpu_us_per_request(
                        work, daemons[name], args.requests, batch, fields, user))
            order.reverse()  # alternate which daemon goes first
    finally:
        sandbox.stop_daemon(pure)
    result = {}
    for load_name in loads:
        for name in daemons:
            result["%s_%s_cpu_us" % (load_name, name)] = round(
                statistics.median(samples[(load_name, name)]), 2)
        cy, py = (result["%s_%s_cpu_us" % (load_name, n)] for n in ("cython", "python"))
        result["%s_python_over_cython" % load_name] = round(py / cy, 3) if cy else None
    result["local_peer"] = "unprivileged" if os.geteuid() == 0 else "privileged"
    result.update(requests=args.requests, rounds=args.rounds, batch=args.batch)
    return result


def report(result):
    print("qmailsqld CPU per cached request, median of %d rounds of %d requests (us)"
          % (result["rounds"], result["requests"]))
    print("%-18s %10s %10s %8s" % ("request", "cython", "python", "py/cy"))
    for load_name in ("getpw", "local", "getpw_pipelined"):
        print("%-18s %10.2f %10.2f %8s" % (
            load_name, result[load_name + "_cython_cpu_us"],
            result[load_name + "_python_cpu_us"], result[load_name + "_python_over_cython"]))
    print("(local from a %s peer; pipelined: %d requests per write)" % (
        result["local_peer"], result["batch"]))
    print(json.dumps(result))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=100000,
                   help="requests per load and round (default 100000)")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    p.add_argument("--batch", type=int, default=16,
                   help="requests per write for getpw_pipelined (default 16)")
    args = p.parse_args(argv)
    if min(args.requests, args.rounds, args.batch) < 1:
        p.error("--requests, --rounds and --batch must be at least 1")
    with benchlib.scratch() as work, benchlib.sandbox_up() as (root, _):
        benchlib.cc(work / "load", [benchlib.HERE / "request_load.c"])
        report(measure(args, work, root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
