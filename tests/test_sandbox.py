"""`qmailsql sandbox up` on a host whose name (and localhost) cannot be looked up."""
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from qmailsql.sandbox import host as sb

# in a private mount and UTS namespace: an empty /etc/hosts and a host name nothing knows
NO_NAMES = 'mount --bind "$1" /etc/hosts && hostname qmailsql-nowhere-test && shift && exec "$@"'


def test_sandbox_up_without_host_name_resolution(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("")
    probe = subprocess.run(["unshare", "--mount", "--uts", "sh", "-c",
                            NO_NAMES + " && getent hosts localhost", "sh", str(hosts), "true"],
                           capture_output=True, text=True)
    if probe.returncode not in (0, 2):
        pytest.skip("cannot make a mount/UTS namespace here: %s" % probe.stderr.strip())
    root = tempfile.mkdtemp(prefix="qsn-", dir="/tmp")
    try:
        r = subprocess.run(["unshare", "--mount", "--uts", "sh", "-c", NO_NAMES, "sh",
                            str(hosts), sys.executable, "-m", "qmailsql", "sandbox", "up", root,
                            "--no-daemon"], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        assert sb.root_sql(sb.Paths(root), [("SELECT 1", ())]) == ((1,),)
    finally:
        try:
            sb.down(root)
        except sb.SandboxError:
            pass
        shutil.rmtree(root, ignore_errors=True)
    assert not os.path.exists(root)
