"""The README's commands, run as a reader would run them, so that none of them rots.

* "Installing on a qmail server": the whole block, on a private MariaDB server that
  stands in for the host's freshly installed one (root gets in through unix_socket),
  a temporary qmail home standing in for /var/qmail, and a copy of this installed
  package standing in for /opt/qmailsql.
* "Tests and benchmarks": every `.venv/bin/...` command, briefly (fewer runs, one
  second), from a neutral cwd, with the installed package and no PYTHONPATH.
"""
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import qmailsql
from conftest import python_for_everyone
from qmailsql.sandbox import host as sb

CHECKOUT = Path(__file__).resolve().parent.parent
README = CHECKOUT / "README.md"
VENV_BIN = Path(sys.executable).parent


def section(title):
    """The README text under `## TITLE`, up to the next `## ` heading."""
    text = README.read_text()
    start = text.index("\n## %s\n" % title)
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def shell_blocks(text):
    return re.findall(r"```sh\n(.*?)```", text, re.S)


def clean_env(**extra):
    """What a root shell has: no PYTHONPATH, no qmailsql variables, no ~/.my.cnf."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("QMAILSQL_", "PYTHON")) and k not in ("MYSQL_PWD",)}
    env.update(extra)
    return env


# ----------------------------------------------------------------- install section

INSTALL_FIRST_LINE = "bash .ci/setup /opt/qmailsql"


def deployment(dest):
    """What `bash .ci/setup DEST` leaves in DEST, made from this run's installed package
    (a build would take a minute): a virtualenv, qmailsql and mysqlclient in its
    site-packages (extension modules of this interpreter's version), and the two
    commands."""
    subprocess.run([python_for_everyone(), "-m", "venv", "--without-pip", str(dest)],
                   check=True)
    site = dest / "lib" / ("python%d.%d" % sys.version_info[:2]) / "site-packages"
    import MySQLdb
    for module in (qmailsql, MySQLdb):
        src = Path(module.__file__).parent
        shutil.copytree(src, site / src.name, ignore=shutil.ignore_patterns("__pycache__"))
    for command, func in (("qmailsql", "main"), ("qmailsqld", "daemon_main")):
        path = dest / "bin" / command
        path.write_text("#!%s\nimport sys\nfrom qmailsql.cli import %s\nsys.exit(%s())\n"
                        % (dest / "bin" / "python", func, func))
        os.chmod(path, 0o755)


def fresh_mariadb(root):
    """A private server with nothing in it, whose root logs in over the socket with no
    password (unix_socket), as on a Debian host where MariaDB was just installed."""
    paths = sb.Paths(root)
    sb.start_db(paths)
    sb.root_sql(paths, [("ALTER USER root@localhost IDENTIFIED VIA unix_socket OR "
                         "mysql_native_password USING PASSWORD(%s)", (sb.root_password(paths),))])
    return paths


STOCK = "#!/bin/sh\n# stands in for stock qmail's %s\nexit 111\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="the install section is run as root")
def test_install_section_runs_as_written():
    block = shell_blocks(section("Installing on a qmail server"))[0]
    lines = block.rstrip("\n").split("\n")
    assert lines[0] == INSTALL_FIRST_LINE  # replaced by deployment(), below
    split = next(i for i, l in enumerate(lines) if l.startswith("ln -s "))
    before_svscan, after_svscan = lines[1:split + 1], lines[split + 1:]

    work = Path(tempfile.mkdtemp(prefix="qsi-", dir="/tmp"))
    os.chmod(work, 0o755)
    qmail, service, opt, home = work / "qmail", work / "service", work / "opt", work / "home"
    for d in (qmail / "bin", qmail / "control", service, home):
        d.mkdir(parents=True)
    for name in ("qmail-getpw", "qmail-local"):  # stock qmail's programs, installed before
        (qmail / "bin" / name).write_text(STOCK % name)
        os.chmod(qmail / "bin" / name, 0o755)
    daemon = None
    try:
        paths = fresh_mariadb(work / "db")
        deployment(opt)
        subst = [("/opt/qmailsql", str(opt)), ("/var/qmail", str(qmail)),
                 ("/run/mysqld/mysqld.sock", str(paths.db_socket)),
                 ("/service/", str(service) + "/")]

        def script(part):
            text = "\n".join(part) + "\n"
            for a, b in subst:
                text = text.replace(a, b)
            return text
        sock = qmail / "qmailsql" / "qmailsqld.sock"
        # QMAILSQL_SOCKET: where helpers built with conf-qmail = this qmail home would look
        env = clean_env(HOME=str(home), QMAILSQL_QMAIL_DIR=str(qmail),
                        QMAILSQL_SOCKET=str(sock), PATH="/usr/sbin:/usr/bin:/sbin:/bin")
        probe = subprocess.run(["setuidgid", "nobody", str(opt / "bin" / "python"), "-c",
                                "import qmailsql.core._hot, MySQLdb"], capture_output=True, env=env)
        assert probe.returncode == 0, probe.stderr

        r = subprocess.run(["bash", "-euo", "pipefail", "-c", script(before_svscan)],
                           cwd=str(CHECKOUT), env=env, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr

        sqlserver = qmail / "control" / "sqlserver"
        st = sqlserver.stat()
        assert (st.st_mode & 0o777, st.st_gid) == (0o640, pwd.getpwnam("qmailsql").pw_gid)
        grants = {g for (g,) in sb.root_sql(paths, [("SHOW GRANTS FOR qmailsql@localhost",
                                                      ())])}
        assert {g for g in grants if not g.startswith("GRANT USAGE ")} == {  # the README's
            "GRANT SELECT ON `qmail`.* TO `qmailsql`@`localhost`",
            "GRANT UPDATE (`password_type`, `password`) ON `qmail`.`mailbox` TO "
            "`qmailsql`@`localhost`"}
        assert (qmail / "bin" / "qmail-local.orig").read_text() == STOCK % "qmail-local"

        # what svscan does after the `ln -s`: supervise runs ./run in the service dir
        log = open(work / "daemon.log", "wb")
        daemon = subprocess.Popen(["./run"], cwd=str(service / "qmailsqld"), env=env,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 60
        while not sock.exists():
            assert daemon.poll() is None, (work / "daemon.log").read_text()
            assert time.monotonic() < deadline, "qmailsqld did not start"
            time.sleep(0.1)
        with open("/proc/%d/status" % daemon.pid) as f:
            uid = int(next(l for l in f if l.startswith("Uid:")).split()[1])
        assert uid == pwd.getpwnam("qmailsql").pw_uid

        outputs = []
        for line in after_svscan:
            r = subprocess.run(["bash", "-c", script([line])], cwd=str(CHECKOUT), env=env,
                               capture_output=True, text=True, timeout=300)
            outputs.append((line, r))
        sync, doctor = outputs
        assert sync[1].returncode == 0, sync[1].stderr
        checks = set(re.findall(r"^(?:ERROR|WARNING) \[([a-z-]+)\]", doctor[1].stdout, re.M))
        # the one thing this stand-in host lacks: qmail's `alias` user (INSTALL.ids)
        assert checks <= {"alias-user-missing"}, doctor[1].stdout + doctor[1].stderr

        # and mail is routed: a mailbox added as the administrator, asked through the
        # installed qmail-getpw and the daemon that runs as qmailsql
        mhome = work / "mail" / "jdoe"
        mhome.mkdir(parents=True)
        os.chown(mhome, 64021, 64021)
        r = subprocess.run([str(opt / "bin" / "qmailsql"), "--qmail-dir", str(qmail),
                            "mailbox", "add", "jdoe", "--uid", "64021", "--gid", "64021",
                            "--home", str(mhome)], env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        r = subprocess.run([str(qmail / "bin" / "qmail-getpw"), "jdoe-list"], env=env,
                           capture_output=True)
        assert r.returncode == 0, r.stderr
        assert r.stdout == b"jdoe\x0064021\x0064021\x00%s\x00-\x00list\x00" % bytes(mhome)
    finally:
        if daemon is not None:
            os.killpg(daemon.pid, signal.SIGTERM)
            daemon.wait(timeout=30)
        try:
            sb.stop_db(sb.Paths(work / "db"))
        finally:
            shutil.rmtree(work, ignore_errors=True)


# ----------------------------------------------------------------- tests and benchmarks

# each README command, and what makes it brief; a command missing here fails the test
BRIEF = {
    ".venv/bin/pytest bench --benchmark-enable": [
        "--benchmark-min-rounds=1", "--benchmark-max-time=0.001", "--benchmark-warmup=off",
        "-q", "-p", "no:cacheprovider"],
    ".venv/bin/python bench/latency.py": ["--runs", "5", "--warmup", "1", "--seconds", "1"],
    ".venv/bin/python bench/soak.py --seconds 60": ["--seconds", "1"],
    ".venv/bin/python bench/doctor_scale.py": ["2000"],
    ".venv/bin/python bench/dovecot_login.py": ["--logins", "5", "--warmup", "1",
                                                "--userdb", "5"],
    ".venv/bin/python bench/virtual_scale.py": ["--rows", "2000", "--runs", "5"],
    ".venv/bin/python bench/quota.py": ["--runs", "10", "--warmup", "1", "--messages", "300",
                                        "--recalc-runs", "1"],
}
# run elsewhere: the suite itself (by .ci/run), whose run this is; the delivery, scale
# and dispatch benches, with their own checks, by tests/test_bench_scripts.py
ELSEWHERE = {".venv/bin/pytest tests", ".venv/bin/python bench/delivery.py",
             ".venv/bin/python bench/scale.py", ".venv/bin/python bench/dispatch.py"}
JSON_KEYS = {
    "bench/latency.py": {"exec_floor_ms", "getpw_ms", "local_ms", "checkpassword_ms",
                         "oneshot_ms", "daemon_rps"},
    "bench/soak.py": {"runs", "errors"},
    "bench/doctor_scale.py": {"rows", "doctor_s", "rows_per_s"},
    "bench/dovecot_login.py": {"static_login_ms", "lua_cached_over_static"},
    "bench/virtual_scale.py": {"small_ms", "big_ms", "big_over_small"},
    "bench/quota.py": {"plain_ms", "quota_small_ms", "quota_big_ms", "recalc_big_ms",
                       "quota_small_ratio", "big_over_small"},
}


def readme_commands():
    text = section("Tests and benchmarks")
    return sorted(set(re.findall(r"`(\.venv/bin/[^`]+)`", text)))


def test_every_readme_command_is_covered():
    found = set(readme_commands())
    assert found, "no .venv/bin commands found in the README's Tests and benchmarks"
    assert found <= set(BRIEF) | ELSEWHERE, "add a brief form to BRIEF for: %s" % (
        found - set(BRIEF) - ELSEWHERE)


@pytest.mark.parametrize("command", sorted(BRIEF))
def test_readme_command_runs_from_a_neutral_cwd(command, tmp_path):
    if command not in readme_commands():
        pytest.skip("no longer in the README")
    argv = []
    for word in shlex.split(command):
        if word.startswith(".venv/bin/"):
            word = str(VENV_BIN / word[len(".venv/bin/"):])
        elif (CHECKOUT / word).exists():
            word = str(CHECKOUT / word)
        argv.append(word)
    r = subprocess.run(argv + BRIEF[command], cwd=str(tmp_path), env=clean_env(),
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, "%s\n%s\n%s" % (" ".join(argv), r.stdout[-3000:],
                                              r.stderr[-3000:])
    script = next((s for s in JSON_KEYS if s in command), None)
    if script:
        last = json.loads(r.stdout.strip().split("\n")[-1])
        assert JSON_KEYS[script] <= set(last), last
        print(command, "->", r.stdout.strip().split("\n")[-1])
    else:
        assert " passed" in r.stdout, r.stdout[-2000:]


# ----------------------------------------------------------------- quick start, packaging

def test_quick_start_is_two_command_lines():
    """SPEC 9: the first code block of `## Quick start` holds exactly two commands."""
    block = shell_blocks(section("Quick start"))[0]
    assert [l for l in block.split("\n") if l.strip()] == [
        "bash .ci/setup && .venv/bin/qmailsql demo", "bash .ci/setup && .venv/bin/pytest tests"]


def test_pyproject_builds_without_deprecated_metadata():
    """project.license as an SPDX string, with a setuptools that reads it (>= 77): the
    table form stops building after 2027-02-18, and an unpinned setuptools would take
    that release."""
    tomllib = pytest.importorskip("tomllib")  # python 3.11+
    meta = tomllib.loads((CHECKOUT / "pyproject.toml").read_text())
    assert isinstance(meta["project"]["license"], str)
    [setuptools] = [r for r in meta["build-system"]["requires"] if r.startswith("setuptools")]
    bound = re.fullmatch(r"setuptools>=(\d+)(\.\d+)*", setuptools.replace(" ", ""))
    assert bound and int(bound.group(1)) >= 77, setuptools
