"""The `workers` setting, and once-per-database leadership by file lock across real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from gateway.config import ConfigError, parse_config
from gateway.workers.count import MAX_WORKERS, resolve_workers
from gateway.workers.leadership import FileLeadership


@pytest.mark.parametrize("value", [0, -1, MAX_WORKERS + 1, "many", True, 2.5, None])
def test_a_bad_workers_value_is_a_config_error_naming_the_key(value):
    with pytest.raises(ConfigError, match=r"^workers: must be a whole number from 1 to 64, or auto"):
        parse_config({"workers": value})


def test_workers_default_to_one_and_auto_means_the_usable_cores():
    assert parse_config({}).workers == 1
    assert parse_config({"workers": "3"}).workers == 3  # as ${VAR} gives it
    assert resolve_workers(parse_config({"workers": "auto"}).workers, cores=6) == 6
    assert resolve_workers("auto", cores=500) == MAX_WORKERS
    assert resolve_workers("auto") == len(os.sched_getaffinity(0))


HOLDER = (
    "import sys, time; from gateway.workers.leadership import FileLeadership; "
    "print(FileLeadership(sys.argv[1]).hold('runner'), flush=True); time.sleep(60)"
)


def test_one_process_leads_and_another_takes_over_when_it_is_killed(tmp_path):
    prefix = str(tmp_path / "db" / "gateway.db.leader")
    child = subprocess.Popen([sys.executable, "-c", HOLDER, prefix], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "True"
        here = FileLeadership(prefix)
        assert here.hold("runner") is False  # the child leads
        assert here.hold("other") is True  # a different job is free
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        assert here.hold("runner") is True  # the kernel dropped the dead leader's lock
        assert here.hold("runner") is True
        here.release_all()
        assert FileLeadership(prefix).hold("runner") is True
    finally:
        child.kill()
        child.wait()


def test_a_bad_workers_flag_is_refused_naming_it():
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--workers", "0"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "--workers: must be a whole number from 1 to 64, or auto" in done.stderr
