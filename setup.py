"""Build: the Cython hot path (qmailsql/*.pyx) and the compiled qmail helpers (csrc/).

The helpers are plain C programs with no MySQL library: they are compiled here with
the system C compiler, statically when the C library allows it, and shipped inside
the package under qmailsql/libexec/ (`qmailsql helper NAME` prints the path).
conf-qmail (one line, the qmail home) is compiled into them as their default.
"""
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
HELPERS = ["qmail-getpw", "qmail-local", "checkpassword"]
CLIENT_SOURCES = ["csrc/qsclient.c"]
EXTRA_SOURCES = {"qmail-local": ["csrc/maildirsize.c"]}  # Maildir++ quota


def die(msg):
    sys.stderr.write("\nqmailsql build: %s\n\n" % msg)
    raise SystemExit(1)


def qmail_dir():
    lines = (HERE / "conf-qmail").read_text().split("\n")
    path = lines[0].strip()
    if not path.startswith("/"):
        die("conf-qmail must hold an absolute path on its first line, not %r" % path)
    return path


def cc():
    compiler = os.environ.get("CC", "cc").split()
    if not shutil.which(compiler[0]):
        die("no C compiler (%s) found. On Debian: apt-get install build-essential" % compiler[0])
    return compiler


def can_link_static(compiler):
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "t.c")
        src.write_text("int main(void){return 0;}\n")
        r = subprocess.run(compiler + ["-static", "-o", str(Path(tmp, "t")), str(src)],
                           capture_output=True)
        return r.returncode == 0


def build_helpers(out_dir):
    """Compile csrc/ programs into OUT_DIR/libexec and record conf-qmail beside them."""
    (out_dir / "conf-qmail").write_text(qmail_dir() + "\n")
    out_dir = out_dir / "libexec"
    compiler = cc()
    static = ["-static"] if can_link_static(compiler) else []
    out_dir.mkdir(parents=True, exist_ok=True)
    conf = qmail_dir()
    for name in HELPERS:
        src = HERE / "csrc" / (name + ".c")
        if not src.exists():
            continue  # not written yet; `qmailsql helper NAME` says so
        cmd = compiler + ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
                          '-DQMAIL_DIR="%s"' % conf, "-I", str(HERE / "csrc"),
                          "-o", str(out_dir / name), str(src)]
        cmd += [str(HERE / s) for s in CLIENT_SOURCES + EXTRA_SOURCES.get(name, [])] + static
        print("building helper:", " ".join(cmd))
        r = subprocess.run(cmd)
        if r.returncode:
            die("compiling %s failed (see the compiler's message above)" % src)


class BuildExt(build_ext):
    def run(self):
        super().run()
        build_helpers(HERE / "qmailsql")
        if not self.inplace:
            build_helpers(Path(self.build_lib) / "qmailsql")


class Sdist(sdist):
    """The sdist carries what the build needs besides the package: csrc/ and conf-qmail
    (and tests/, bench/ and .ci/, so a release can be set up and checked as it is, the
    README's Quick start included)."""

    def make_release_tree(self, base_dir, files):
        extra = ["conf-qmail", "README.md", ".ci/setup", ".ci/run"]
        for folder in ("csrc", "tests", "bench"):
            extra += sorted(str(p.relative_to(HERE)) for p in (HERE / folder).iterdir()
                            if p.is_file() and p.suffix in (".c", ".h", ".md", ".py"))
        super().make_release_tree(base_dir, sorted(set(files) | set(extra)))


def extensions():
    try:
        from Cython.Build import cythonize
    except ImportError:
        die("Cython is needed to build qmailsql: pip install cython")
    exts = [Extension("qmailsql.core._hot", ["qmailsql/core/_hot.pyx"])]
    if (HERE / "qmailsql" / "core" / "_crypt.pyx").exists():
        exts.append(Extension("qmailsql.core._crypt", ["qmailsql/core/_crypt.pyx"], libraries=["crypt"]))
    return cythonize(exts, language_level=3, quiet=True)


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt, "sdist": Sdist})
