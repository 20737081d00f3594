"""`sqlite:///path?synchronous=full|normal`: the URL is split and validated (by `sqlite_options`
and by the config schema, naming what is wrong), and an opened store really runs with the pragma."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, parse_config
from gateway.store import SQLiteStore, open_store_for, sqlite_options


@pytest.mark.parametrize(("url", "path", "options"), [
    ("sqlite:///data/gateway.db", "data/gateway.db", {}),
    ("sqlite:////abs/gateway.db", "/abs/gateway.db", {}),
    ("sqlite:///g.db?synchronous=normal", "g.db", {"synchronous": "NORMAL"}),
    ("sqlite:///g.db?synchronous=full", "g.db", {"synchronous": "FULL"}),
    ("sqlite:///g.db?synchronous=Normal", "g.db", {"synchronous": "NORMAL"}),
    ("sqlite:////abs/g.db?synchronous=FULL", "/abs/g.db", {"synchronous": "FULL"}),
    ("sqlite:///g.db?", "g.db", {}),
])
def test_valid_urls_split_into_path_and_options(url, path, options):
    """A good URL gives its path and the option upper-cased, and the config schema keeps it as written."""
    assert sqlite_options(url) == (path, options)
    assert parse_config({"store": url}, env={}).store == url


@pytest.mark.parametrize(("url", "named"), [
    ("sqlite:///g.db?sync=full", ["'sync'", "synchronous"]),          # unknown option, the known one listed
    ("sqlite:///g.db?journal_mode=wal", ["'journal_mode'"]),
    ("sqlite:///g.db?synchronous=off", ["synchronous", "'off'", "full", "normal"]),  # bad value, choices listed
    ("sqlite:///g.db?synchronous=", ["synchronous", "''"]),
    ("sqlite:///g.db?synchronous=normal;x", ["'normal;x'"]),        # nothing smuggled into the PRAGMA
    ("sqlite:///", ["needs a file path"]),                            # empty path
    ("sqlite:///?synchronous=full", ["needs a file path"]),
    ("sqlite:///g.db?synchronous", ["bad query field", "'synchronous'"]),  # malformed query
    ("sqlite:///g.db?synchronous=full&", ["bad query field"]),
    ("sqlite:///g.db?synchronous=full&synchronous=normal", ["'synchronous'", "twice"]),  # which one was meant?
])
def test_invalid_urls_are_rejected_naming_the_problem(url, named):
    """`sqlite_options` raises ValueError, and `parse_config` a ConfigError on `store`, each naming the bad part."""
    with pytest.raises(ValueError) as raised:
        sqlite_options(url)
    for text in named:
        assert text in str(raised.value)
    with pytest.raises(ConfigError) as config_error:
        parse_config({"store": url}, env={})
    message = str(config_error.value)
    assert message.startswith("store:")
    for text in named:
        assert text in message


async def _synchronous_of(store: SQLiteStore) -> int:
    return await store._write(lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0])


@pytest.mark.parametrize(("query", "pragma"), [("?synchronous=normal", 1), ("?synchronous=full", 2), ("", 2)])
async def test_an_opened_store_runs_with_the_pragma(tmp_path, query, pragma):
    """The writer connection of a store from `open_store_for` has PRAGMA synchronous 1 (NORMAL) or 2 (FULL, the default)."""
    path = tmp_path / "g.db"
    store = open_store_for(f"sqlite:///{path}{query}")
    assert isinstance(store, SQLiteStore) and store.path == str(path)
    await store.open()
    try:
        assert await _synchronous_of(store) == pragma
        assert await store._read(lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0]) == pragma
    finally:
        await store.close()
    assert [p.name for p in tmp_path.glob("g.db*") if "?" in p.name] == []  # the query is not part of a file name
