"""`qmailsql demo`, the README's first command: the FAQ's answers through the real helpers."""
import os
import subprocess
import sys


def test_demo_shows_the_faq_answers_and_cleans_up():
    r = subprocess.run([sys.executable, "-m", "qmailsql", "demo"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()

    def line(start):
        return next(l for l in lines if l.lstrip().startswith(start))
    assert "user=iain " in line("iain ") and "ext=''" in line("iain ")
    assert "user=iain-sanity " in line("iain-sanity ")
    assert "dash=-  ext=slowlaris" in line("iain-slowlaris ")
    assert "user=virtual " in line("virtual.com-anyone") and "ext=@" in line("virtual.com-anyone")
    assert "user=alias " in line("nobody-here")
    assert "(rows: lines passed as aliasempty)" in line("iain-slowlaris@example.org")
    assert "(no rows: argv unchanged)" in line("iain@example.org")
    assert "password 'secret' exit 0" in r.stdout and "logged in: USER=iain uid=800" in r.stdout
    assert "password 'wrong'  exit 1 (refused)" in r.stdout
    root = lines[-1].split()[2].rstrip(",")
    assert lines[-1].startswith("sandbox down") and not os.path.exists(root)


def test_demo_leaves_nothing_behind_when_the_sandbox_fails(monkeypatch):
    """A `sandbox up` that dies (here: mariadb-install-db refusing) still removes the
    demo's /tmp/qsdemo-* directory."""
    import tempfile
    from qmailsql.sandbox import demo, host as sandbox
    made = []
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp(**kw):
        made.append(real_mkdtemp(**kw))
        return made[-1]

    def up(root, **kw):
        sandbox.Paths(root).mysql.mkdir(parents=True)  # it got that far
        (sandbox.Paths(root).root / sandbox.MARKER).touch()
        raise sandbox.SandboxError("mariadb-install-db failed: Neither host 'x' nor "
                                   "'localhost' could be looked up")
    monkeypatch.setattr(demo.tempfile, "mkdtemp", mkdtemp)
    monkeypatch.setattr(demo.sandbox, "up", up)
    out = []
    try:
        demo.run(out=out.append)
    except sandbox.SandboxError:
        pass
    else:
        raise AssertionError("the failure was swallowed")
    assert made and made[0].startswith("/tmp/qsdemo-")
    assert not os.path.exists(made[0]), out
