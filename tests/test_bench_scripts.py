"""The bench scripts run, end to end, with tiny options: bench/delivery.py,
bench/latency.py, bench/scale.py and bench/dispatch.py each bring up their own sandbox
and must print their JSON line with every key (SPEC section 9) and numbers that make
sense.

They run from a neutral cwd with the installed package only (no PYTHONPATH), as
`python bench/NAME.py` does on a fresh clone; a script that put the source tree
first on sys.path would import a package without its compiled modules and fail.
No timing is asserted: speed is what the scripts report, not what a test checks.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
DOVECOT_MYSQL = "/usr/lib/dovecot/modules/libdriver_mysql.so"


def run_bench(name, args, cwd):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QMAILSQL_", "PYTHON"))}
    r = subprocess.run([sys.executable, str(BENCH / name)] + args, cwd=str(cwd), env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, "%s failed (%d):\n%s\n%s" % (name, r.returncode, r.stdout[-3000:],
                                                           r.stderr[-3000:])
    lines = r.stdout.strip().split("\n")
    assert len(lines) > 1, "no table before the JSON line:\n" + r.stdout
    return json.loads(lines[-1]), r.stdout


def positive(out, keys):
    for key in keys:
        assert isinstance(out.get(key), (int, float)) and out[key] > 0, (key, out.get(key))


def test_delivery_bench(tmp_path):
    out, text = run_bench("delivery.py", ["--messages", "20", "--rounds", "1", "--users", "4",
                                          "--warmup", "4"], tmp_path)
    positive(out, ["stock_cpu_ms", "qmailsql_cpu_ms", "nocache_cpu_ms", "spawn_floor_cpu_ms",
                   "stock_deliveries_per_s", "qmailsql_deliveries_per_s",
                   "nocache_deliveries_per_s", "qmailsql_over_stock", "nocache_over_stock",
                   "getpw_alone_cpu_ms", "wrapper_alone_cpu_ms", "standin_alone_cpu_ms"])
    assert out["added_over_floor"] == pytest.approx(
        (out["qmailsql_cpu_ms"] - out["stock_cpu_ms"]) / out["spawn_floor_cpu_ms"], abs=0.01)
    # qmailsqld's and mariadbd's CPU come from /proc in clock ticks: small runs may see 0
    for key in ("qmailsql_daemon_cpu_ms_per_request", "nocache_daemon_cpu_ms_per_request",
                "qmailsql_db_cpu_ms_per_delivery", "nocache_db_cpu_ms_per_delivery"):
        assert out[key] >= 0, key
    # every timed and untimed delivery of the three modes arrived in its Maildir
    assert out["delivered"] >= 3 * (20 + 4)
    assert "added_over_floor" in text and "each found in its Maildir" in text


def test_latency_bench(tmp_path):
    out, text = run_bench("latency.py", ["--runs", "20", "--warmup", "3", "--cold", "20",
                                         "--rounds", "2", "--seconds", "0.5", "--clients", "2"],
                          tmp_path)
    positive(out, ["exec_floor_ms", "getpw_ms", "local_ms", "checkpassword_ms", "oneshot_ms",
                   "daemon_rps", "getpw_cold_ms", "getpw_warm_rtt_ms"])
    assert out["daemon_cpu_ms_per_request"] >= 0 and out["daemon_cpu_ms_per_cold_request"] >= 0
    if os.geteuid() != 0:
        assert out["dovecot_userdb_cold_ms"] is None and "run the bench as root" in text
        return
    assert os.path.exists(DOVECOT_MYSQL), (
        "Dovecot's MySQL driver is missing: apt-get install dovecot-mysql (bash .ci/setup does)")
    positive(out, ["dovecot_userdb_cold_ms", "dovecot_userdb_warm_ms",
                   "getpw_cold_over_dovecot"])


def test_scale_bench(tmp_path):
    out, text = run_bench("scale.py", ["--sizes", "300,200", "--domain", "400", "--samples",
                                       "30", "--rounds", "2", "--domain-users", "5"], tmp_path)
    assert out["sizes"] == [200, 300] and out["base"] == "200"
    for kind in ("plain_lookup", "virtual_lookup", "plain_login", "virtual_login"):
        assert set(out[kind + "_ms"]) == {"200", "300", "dom400"}
        assert all(v > 0 for v in out[kind + "_ms"].values()), out[kind + "_ms"]
        assert out[kind + "_ratio"]["200"] == 1.0
        assert out[kind + "_ratio"]["dom400"] == pytest.approx(
            out[kind + "_ms"]["dom400"] / out[kind + "_ms"]["200"], rel=0.01)
    assert out["max_ratio"] >= 1.0 and out["worst"].split()[0] in (
        "plain_lookup", "virtual_lookup", "plain_login", "virtual_login")


def test_dispatch_bench(tmp_path):
    out, text = run_bench("dispatch.py", ["--requests", "3000", "--rounds", "2", "--batch",
                                          "8"], tmp_path)
    assert (out["requests"], out["rounds"], out["batch"]) == (3000, 2, 8)
    assert out["local_peer"] == ("unprivileged" if os.geteuid() == 0 else "privileged")
    for load in ("getpw", "local", "getpw_pipelined"):
        cy, py = out[load + "_cython_cpu_us"], out[load + "_python_cpu_us"]
        # the daemons' CPU comes from /proc in clock ticks: small runs may see 0
        assert cy >= 0 and py >= 0, (load, cy, py)
        if cy:
            assert out[load + "_python_over_cython"] == pytest.approx(py / cy, rel=0.01)
        assert load in text
