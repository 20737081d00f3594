"""The console's files ship in the package: every file under gateway/console/static matches a
package-data glob of pyproject.toml (an installed gateway serves the same console)."""

from __future__ import annotations

import fnmatch
import tomllib

from gateway.console import STATIC_DIR
from support import ROOT


def test_every_console_file_is_package_data():
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["gateway.console"]
    files = [path.relative_to(STATIC_DIR.parent).as_posix() for path in STATIC_DIR.rglob("*") if path.is_file()]
    assert "static/index.html" in files and "static/js/app.js" in files
    missing = [name for name in files if not any(fnmatch.fnmatch(name, pattern) and name.count("/") == pattern.count("/")
                                                  for pattern in globs)]
    assert missing == []
