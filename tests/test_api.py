"""The Python API as the README shows it, and the helper names kept in one place."""
import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import qmailsql
from qmailsql.core import auth, helpers

CHECKOUT = Path(__file__).resolve().parent.parent


def readme_script():
    """The README's one Python block (under "Scripts: the Python API")."""
    text = (CHECKOUT / "README.md").read_text()
    part = text[text.index("\n## Scripts: the Python API\n"):]
    part = part[:part.index("\n## ", 1)]
    blocks = re.findall(r"```python\n(.*?)```", part, re.S)
    assert len(blocks) == 1, "the section should show exactly one script"
    return blocks[0]


def test_readme_provisioning_script_runs(own_sandbox):
    root, env = own_sandbox
    run = subprocess.run([sys.executable, "-c", readme_script()], capture_output=True,
                         text=True, env=dict(os.environ, **env), timeout=120)
    print(run.stdout, run.stderr)
    assert run.returncode == 0, run.stderr
    domain = "example.org"
    names = ["%s-%s" % (domain, u) for u in ("ann", "bob", "joe")]
    assert run.stdout.split() == [w for n in names
                                  for w in (n, "/home/vmail/%s/%s" % (domain, n.split("-")[1]))]
    with qmailsql.connect(str(root)) as q:
        assert [m.username for m in q.mailboxes()] == names
        mapped = {(v.virtual_username, v.virtual_host): v.username for v in q.virtuals()}
        assert mapped == {("ann", domain): names[0], ("bob", domain): names[1],
                          ("joe", domain): names[2], ("", domain): names[2]}
        # each password works and is not another's
        login = q.authenticate(names[0], "s3cret-2")
        assert login.user == names[0] and login.uid == 8000
        try:
            q.authenticate(names[0], "s3cret-1")
            raise AssertionError("ann logged in with joe's password")
        except auth.LoginRefused:
            pass
    control = (root / "control" / "virtualdomains").read_text()
    assert "%s:%s" % (domain, domain) in control.split("\n")


def test_setup_builds_the_helpers_core_names():
    """setup.py runs before the package exists, so it has its own list: the same one."""
    tree = ast.parse((CHECKOUT / "setup.py").read_text())
    lists = [ast.literal_eval(n.value) for n in ast.walk(tree) if isinstance(n, ast.Assign)
             and any(getattr(t, "id", None) == "HELPERS" for t in n.targets)]
    assert lists == [list(helpers.NAMES)]
    installed = [name for name, _, _ in helpers.INSTALLED]
    assert sorted(installed) == sorted(helpers.NAMES + tuple(helpers.SCRIPTS))
