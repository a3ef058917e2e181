"""
The package installs as users install it (C{pip install .}, not editable) and twistd finds the
plugin in the installed copy.

The checkout is copied first, so that the build's C{build/} and C{*.egg-info} never land in the
working tree; the copy is installed into a fresh virtualenv that sees the system's packages (the
dependencies) but not the checkout, and twistd is run from a directory outside the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial import unittest

REPO = Path(__file__).resolve().parent.parent

#: What is left out of the copy that gets built.
_IGNORE = shutil.ignore_patterns(
    ".git", "build", "dist", "*.egg-info", "__pycache__", "_trial_temp*", ".mypy_cache",
    ".ruff_cache", ".hypothesis", "*.sqlite3*", "dropin.cache", "node_modules", "bench",
)

_TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


def _run(args: list[str], cwd: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, check=False)


class InstallTests(unittest.TestCase):
    """A non-editable install into a fresh virtualenv."""

    def setUp(self) -> None:
        self.work = tempfile.mkdtemp(prefix="xmppjson-packaging-")
        self.addCleanup(shutil.rmtree, self.work, True)
        self.venv = Path(self.work, "venv")
        try:
            # --without-pip: the system's pip (and setuptools, wheel) are seen through
            # --system-site-packages, and skipping ensurepip saves seconds.
            made = _run([sys.executable, "-m", "venv", "--system-site-packages",
                         "--without-pip", str(self.venv)], cwd=self.work)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise unittest.SkipTest(f"cannot create a virtualenv here: {e}")
        if made.returncode != 0:
            raise unittest.SkipTest(f"cannot create a virtualenv here: {made.stderr.strip()}")
        self.python = str(self.venv / "bin" / "python")

    def test_installAndRun(self) -> None:
        source = Path(self.work, "src")
        shutil.copytree(REPO, source, ignore=_IGNORE)
        installed = _run([self.python, "-m", "pip", "install", "--no-deps",
                          "--no-build-isolation", "--no-index", str(source)], cwd=self.work)
        self.assertEqual(installed.returncode, 0, installed.stdout + installed.stderr)

        # the installed copy is the one imported, and the plugin file went with it (the
        # system's site-packages may hold another install, as in CI after `pip install .`:
        # Twisted then finds that plugin file first, so the venv's own file is checked on disk)
        probe = ("import sysconfig, xmppjson; print(xmppjson.__file__); "
                 "print(sysconfig.get_paths()['purelib'])")
        where = _run([self.python, "-c", probe], cwd=self.work)
        self.assertEqual(where.returncode, 0, where.stderr)
        package, purelib = where.stdout.split()
        self.assertTrue(package.startswith(str(self.venv)), f"{package} is not in the venv")
        plugins = Path(purelib, "twisted", "plugins")
        self.assertTrue((plugins / "xmppjson.py").is_file(), f"no plugin file in {plugins}")
        # twisted/ and twisted/plugins/ must stay namespace directories: an __init__.py there
        # would shadow Twisted itself
        self.assertFalse((plugins / "__init__.py").exists())
        self.assertFalse((plugins.parent / "__init__.py").exists())

        # twistd lists it ...
        listed = _run([self.python, "-c", _TWISTD, "--help"], cwd=self.work)
        self.assertEqual(listed.returncode, 0, listed.stderr)
        self.assertRegex(listed.stdout, r"(?m)^\s+xmppjson\s+")

        # ... and runs its option parser
        helped = _run([self.python, "-c", _TWISTD, "-n", "xmppjson", "--help"], cwd=self.work)
        self.assertEqual(helped.returncode, 0, helped.stderr)
        for option in ("--domain", "--c2s", "--web", "--db", "--registration", "--token-ttl"):
            self.assertIn(option, helped.stdout)

        # a bad option is refused with the plugin's own message
        refused = _run([self.python, "-c", _TWISTD, "-n", "xmppjson", "--db", "mysql://x"],
                       cwd=self.work)
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("use sqlite:FILE", refused.stdout + refused.stderr)
