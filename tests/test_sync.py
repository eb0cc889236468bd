"""`qmailsql sync` (SPEC section 7) and the cdb writer it uses."""
import os
import random
import shutil
import subprocess
import sys
import time

import pytest
from conftest import add_virtual

from qmailsql.core import cdb
from qmailsql.admin import sync
from qmailsql.sandbox import host as sb

# ------------------------------------------------------------------ an independent reader

def u32(data, off):
    return int.from_bytes(data[off:off + 4], "little")


def ref_lookup(data, key):
    """All values of KEY, straight from cr.yp.to/cdb/cdb.txt (not qmailsql.core.cdb)."""
    h = 5381
    for c in key:
        h = ((h * 33) ^ c) % (1 << 32)
    tpos, tlen = u32(data, (h % 256) * 8), u32(data, (h % 256) * 8 + 4)
    found = []
    if tlen == 0:
        return found
    slot = (h // 256) % tlen
    for _ in range(tlen):
        sh, rpos = u32(data, tpos + slot * 8), u32(data, tpos + slot * 8 + 4)
        if rpos == 0:
            break
        if sh == h:
            klen, dlen = u32(data, rpos), u32(data, rpos + 4)
            if data[rpos + 8:rpos + 8 + klen] == key:
                found.append(data[rpos + 8 + klen:rpos + 8 + klen + dlen])
        slot = (slot + 1) % tlen
    return found


def ref_records(data):
    end = min(u32(data, i * 8) for i in range(256))
    pos, out = 2048, []
    while pos < end:
        klen, dlen = u32(data, pos), u32(data, pos + 4)
        out.append((data[pos + 8:pos + 8 + klen], data[pos + 8 + klen:pos + 8 + klen + dlen]))
        pos += 8 + klen + dlen
    assert pos == end
    return out


TINYCDB = shutil.which("cdb")


def require_tinycdb():
    assert TINYCDB, "tinycdb's cdb(1) is missing: apt-get install tinycdb (bash .ci/setup does)"


def tinycdb_dump(path):
    return subprocess.run([TINYCDB, "-d", str(path)], capture_output=True, check=True).stdout


# ------------------------------------------------------------------ cdb

def test_cdb_empty():
    data = cdb.make([])
    assert len(data) == 2048
    assert ref_lookup(data, b"x") == [] and ref_records(data) == []
    assert cdb.Reader(data).get(b"x") is None


def test_cdb_roundtrip_against_reference():
    rnd = random.Random(7)
    pairs = [(bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 40))),
              bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 60))))
             for _ in range(3000)]
    pairs += [(b"dup", b"one"), (b"dup", b"two"), (b"", b"empty key")]
    data = cdb.make(pairs)
    assert ref_records(data) == pairs
    reader = cdb.Reader(data)
    for k, _ in pairs[:500] + pairs[-3:]:
        want = [v for kk, v in pairs if kk == k]
        assert ref_lookup(data, k) == want
        assert reader.get_all(k) == want
    assert reader.get(b"dup") == b"one"
    assert ref_lookup(data, b"no such key \xff") == [] and b"no such key" not in reader
    assert reader.items() == pairs


def test_cdb_known_bytes():
    """One record, worked by hand from cdb.txt: hash('a') = (5381*33) ^ 97 = 177604."""
    data = cdb.make([(b"a", b"b")])
    h = 177604
    assert cdb.cdb_hash(b"a") == h
    t = h & 255
    assert u32(data, t * 8) == 2048 + 10 and u32(data, t * 8 + 4) == 2
    assert data[2048:2058] == b"\x01\0\0\0\x01\0\0\0ab"
    slot = (h >> 8) % 2
    assert u32(data, 2058 + slot * 8) == h and u32(data, 2058 + slot * 8 + 4) == 2048


def test_cdb_reader_rejects_garbage():
    with pytest.raises(cdb.CDBError):
        cdb.Reader(b"short")
    with pytest.raises(cdb.CDBError):
        cdb.Reader(b"\xff" * 2048)


def test_cdb_write_atomic(tmp_path):
    path = tmp_path / "x.cdb"
    path.write_bytes(b"old")
    os.chmod(path, 0o640)
    cdb.write(path, [(b"k", b"v")])
    assert ref_lookup(path.read_bytes(), b"k") == [b"v"]
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert sorted(os.listdir(tmp_path)) == ["x.cdb"]


def test_cdb_tinycdb_agrees(tmp_path):
    require_tinycdb()
    pairs = [(b"host%d.example" % i, b"") for i in range(200)] + [(b"k", b"val")]
    cdb.write(tmp_path / "t.cdb", pairs)
    dump = tinycdb_dump(tmp_path / "t.cdb")
    assert dump == b"".join(b"+%d,%d:%s->%s\n" % (len(k), len(v), k, v) for k, v in pairs) \
        + b"\n"
    r = subprocess.run([TINYCDB, "-q", str(tmp_path / "t.cdb"), "k"], capture_output=True)
    assert r.stdout == b"val"


# ------------------------------------------------------------------ sync

@pytest.fixture
def qhome(tmp_path):
    (tmp_path / "control").mkdir()
    return tmp_path


def vrow(q, vhost, vuser="u", username="u"):
    add_virtual(q, username, "", vuser, vhost)


def rrow(q, host):
    q.directory.query("INSERT INTO rcpthosts (host) VALUES (%s)", (host,), write=True)


def run_sync(q, qhome, **kw):
    said = []
    changed = sync.sync(str(qhome), q.directory, reload=kw.pop("reload", False),
                        out=said.append)
    return changed, said


def read(qhome, name):
    return (qhome / "control" / name).read_text()


def block(*lines):
    return "\n".join([sync.BEGIN] + list(lines) + [sync.END]) + "\n"


def test_sync_writes_control_files(db, qhome):
    vrow(db, "Virtual.COM")
    vrow(db, "virtual.com", "v2")
    vrow(db, "sillydomain.com")
    rrow(db, "example.org")
    rrow(db, "SillyDomain.com")
    changed, said = run_sync(db, qhome)
    assert changed == ["virtualdomains", "rcpthosts"]
    assert read(qhome, "virtualdomains") == block("sillydomain.com:sillydomain.com",
                                                  "virtual.com:virtual.com")
    assert read(qhome, "rcpthosts") == block("example.org", "sillydomain.com", "virtual.com")
    assert not (qhome / "control" / "morercpthosts").exists()
    assert not (qhome / "control" / "morercpthosts.cdb").exists()
    assert any("--no-reload" in s for s in said)


def test_sync_only_writes_changes(db, qhome):
    vrow(db, "a.com")
    run_sync(db, qhome)
    before = {n: os.stat(qhome / "control" / n).st_ino for n in ("virtualdomains", "rcpthosts")}
    changed, said = run_sync(db, qhome)
    assert changed == []
    assert "control/virtualdomains: unchanged" in said
    assert any("no reload needed" in s for s in said)
    assert before == {n: os.stat(qhome / "control" / n).st_ino
                      for n in ("virtualdomains", "rcpthosts")}
    rrow(db, "b.com")
    changed, _ = run_sync(db, qhome)
    assert changed == ["rcpthosts"]


def test_sync_keeps_hand_written_lines(db, qhome):
    (qhome / "control" / "rcpthosts").write_text("mail.example.net\nlocalhost\n")
    (qhome / "control" / "virtualdomains").write_text(
        "# mine\nlists.example.net:alias-lists\nvirtual.com:joe\n")
    vrow(db, "virtual.com")
    rrow(db, "localhost")
    _, said = run_sync(db, qhome)
    assert read(qhome, "rcpthosts") == "mail.example.net\nlocalhost\n" + block("virtual.com")
    assert read(qhome, "virtualdomains") == (
        "# mine\nlists.example.net:alias-lists\n# replaced by qmailsql sync: virtual.com:joe\n"
        + block("virtual.com:virtual.com"))
    assert any("virtual.com:joe" in s and "commented out" in s for s in said)
    # later runs replace only the block, in place
    with open(qhome / "control" / "rcpthosts", "a") as f:
        f.write("added.by.hand\n")
    vrow(db, "new.org")
    run_sync(db, qhome)
    assert read(qhome, "rcpthosts") == ("mail.example.net\nlocalhost\n"
                                        + block("new.org", "virtual.com") + "added.by.hand\n")


def test_sync_more_than_50_hosts(db, qhome):
    hosts = ["h%03d.example" % i for i in range(120)]
    for h in hosts:
        rrow(db, h)
    (qhome / "control" / "rcpthosts").write_text("own.example\n")
    changed, said = run_sync(db, qhome)
    assert changed == ["virtualdomains", "rcpthosts", "morercpthosts", "morercpthosts.cdb"]
    assert read(qhome, "rcpthosts") == "own.example\n" + block(*hosts[:49])
    assert read(qhome, "morercpthosts") == block(*hosts[49:])
    data = (qhome / "control" / "morercpthosts.cdb").read_bytes()
    assert ref_records(data) == [(h.encode(), b"") for h in hosts[49:]]
    for h in hosts[49:]:
        assert ref_lookup(data, h.encode()) == [b""]
    assert ref_lookup(data, hosts[0].encode()) == []
    assert any("morercpthosts" in s for s in said)
    require_tinycdb()
    assert tinycdb_dump(qhome / "control" / "morercpthosts.cdb").count(b"->") == 71
    # back under 50: the block empties and so does the cdb (no stale acceptance)
    db.directory.query("DELETE FROM rcpthosts WHERE host > 'h010'", write=True)
    changed, _ = run_sync(db, qhome)
    assert changed == ["rcpthosts", "morercpthosts", "morercpthosts.cdb"]
    assert read(qhome, "morercpthosts") == block()
    assert ref_records((qhome / "control" / "morercpthosts.cdb").read_bytes()) == []


def test_sync_cdb_includes_hand_written_morercpthosts(db, qhome):
    (qhome / "control" / "morercpthosts").write_text("Hand.Example  \n# note\n\n")
    rrow(db, "db.example")
    changed, _ = run_sync(db, qhome)
    assert "morercpthosts.cdb" in changed
    data = (qhome / "control" / "morercpthosts.cdb").read_bytes()
    assert ref_records(data) == [(b"hand.example", b"")]   # as qmail-newmrh makes it
    assert read(qhome, "rcpthosts") == block("db.example")


def test_sync_refuses_bad_hosts_and_writes_nothing(db, qhome):
    vrow(db, "good.com")
    vrow(db, "bad host.com")
    rrow(db, "x:y")
    with pytest.raises(sync.SyncError) as e:
        run_sync(db, qhome)
    assert "bad host.com" in str(e.value) and "x:y" in str(e.value)
    assert os.listdir(qhome / "control") == []


def test_sync_missing_control_dir(db, tmp_path):
    with pytest.raises(sync.SyncError):
        sync.sync(str(tmp_path / "nope"), db.directory, reload=False, out=lambda s: None)


def test_stale_for_doctor(db, qhome):
    vrow(db, "a.com")
    assert sorted(sync.stale(str(qhome), db.directory)) == [
        "control/rcpthosts is out of date with the DB; run `qmailsql sync`",
        "control/virtualdomains is out of date with the DB; run `qmailsql sync`"]
    run_sync(db, qhome)
    assert sync.stale(str(qhome), db.directory) == []


HUP_CHILD = r"""
import signal, sys, time
def hup(*_):
    open(sys.argv[1], "w").write("hup")
    sys.exit(0)
signal.signal(signal.SIGHUP, hup)
open(sys.argv[2], "w").write("ready")
while True:
    time.sleep(0.05)
"""


def test_sync_hups_qmail_send(db, qhome, tmp_path, monkeypatch):
    got, ready = tmp_path / "got", tmp_path / "ready"
    child = subprocess.Popen([sys.executable, "-c", HUP_CHILD, str(got), str(ready)])
    try:
        for _ in range(600):
            if ready.exists():
                break
            time.sleep(0.05)
        monkeypatch.setenv("QMAILSQL_QMAIL_SEND_PID", str(child.pid))
        vrow(db, "a.com")
        _, said = run_sync(db, qhome, reload=True)
        assert "sent SIGHUP to qmail-send (pid %d)" % child.pid in said
        assert child.wait(timeout=30) == 0
        assert got.read_text() == "hup"
        # unchanged virtualdomains: no signal at all
        _, said = run_sync(db, qhome, reload=True)
        assert not any("SIGHUP" in s for s in said)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_sync_reload_bad_pid_is_an_error(db, qhome, monkeypatch):
    monkeypatch.setenv("QMAILSQL_QMAIL_SEND_PID", "notapid")
    vrow(db, "a.com")
    with pytest.raises(sync.SyncError):
        run_sync(db, qhome, reload=True)


def test_sync_command(db, qhome, sandbox):
    shutil.copy2(sandbox / "control" / "sqlserver", qhome / "control" / "sqlserver")
    vrow(db, "cli.example")
    env = dict(os.environ)
    env.pop("QMAILSQL_QMAIL_SEND_PID", None)
    # an admin command: the administrator's option file, as ~/.my.cnf would be on a host
    env["QMAILSQL_DEFAULTS_FILE"] = str(sb.Paths(sandbox).root_cnf)
    r = subprocess.run([sys.executable, "-m", "qmailsql", "sync", "--qmail-dir", str(qhome),
                        "--no-reload"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "control/virtualdomains: written" in r.stdout and "--no-reload" in r.stdout
    assert read(qhome, "virtualdomains") == block("cli.example:cli.example")
    vrow(db, "bad host", "z")
    r = subprocess.run([sys.executable, "-m", "qmailsql", "--qmail-dir", str(qhome), "sync",
                        "--no-reload"], env=env, capture_output=True, text=True)
    assert r.returncode == 1 and "bad host" in r.stderr
