"""`make mutate`: mutmut over the critical modules, one module at a time, with a score per module.

Which files are mutated and which test files run is in pyproject's `[tool.mutmut]`; this script
names, per module, the functions whose mutants count (Twilio: the signature check only; Vonage:
the signed-webhook JWT only), runs mutmut on those alone, and prints killed/total. Usage:

    python tests/mutation_run.py [module ...]     # default: every module below
    python tests/mutation_run.py --score-only     # reprint scores from the last runs

Not collected by pytest (no `test_` prefix). The survivors judged equivalent are listed with
their reasons in docs/mutation.md.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# module -> mutmut name globs (mutant names are `<module>.x_<function>__mutmut_<n>` and
# `<module>.xǁ<Class>ǁ<method>__mutmut_<n>`).
MODULES: dict[str, list[str]] = {
    "twilio-signature": [
        f"gateway.providers.twilio.x_{name}__mutmut_*"
        for name in (
            "_items",
            "_split_authority",
            "_strip_userinfo",
            "_origin_of",
            "_with_trailing_slash",
            "verify_twilio_signature",
            "_matches_exactly",
            "_normalize_form",
        )
    ],
    "vonage-jwt": [
        "gateway.providers.vonage.x__bearer_token__mutmut_*",
        "gateway.providers.vonage.x__is_number__mutmut_*",
        "gateway.providers.vonage.x_verify_vonage_jwt__mutmut_*",
        "gateway.providers.vonage.xǁReplayGuardǁ*",
    ],
    "stream-token": ["gateway.media.token.*"],
    "ssrf": ["gateway.webhooks.ssrf.*"],
    "lifecycle": ["gateway.calls.lifecycle.*", "gateway.calls.states.*"],
    "webhook-policy": ["gateway.webhooks.policy.*"],
}
KILLED = {"killed", "timeout", "segfault", "caught by type check"}


def mutmut(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("mutmut")
    return subprocess.run([str(exe), *args], cwd=ROOT, text=True, capture_output=True, env=os.environ.copy())


def statuses() -> dict[str, str]:
    """Every mutant's name -> status, from `mutmut results --all true`."""
    out: dict[str, str] = {}
    for line in mutmut("results", "--all", "true").stdout.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep:
            out[name] = status
    return out


def score(module: str, all_statuses: dict[str, str]) -> tuple[int, int, list[str]]:
    """(killed, total, survivors) of `module`'s mutants."""
    mine = {n: s for n, s in all_statuses.items() if any(fnmatch.fnmatchcase(n, g) for g in MODULES[module])}
    killed = sum(1 for s in mine.values() if s in KILLED)
    return killed, len(mine), sorted(n for n, s in mine.items() if s not in KILLED)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help=f"any of: {', '.join(MODULES)}")
    parser.add_argument("--score-only", action="store_true", help="do not run mutmut, only report")
    parser.add_argument("--max-children", default="1", help="parallel mutants (the machine is shared: 1)")
    args = parser.parse_args()
    modules = args.modules or list(MODULES)
    unknown = [m for m in modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {unknown}; choose from {list(MODULES)}")
    if not args.score_only:
        for module in modules:  # one module at a time
            print(f"== mutating {module}", flush=True)
            run = mutmut("run", "--max-children", args.max_children, *MODULES[module])
            if run.returncode != 0:
                print(run.stdout[-4000:], run.stderr[-4000:], sep="\n")
                return run.returncode
    all_statuses = statuses()
    print(f"{'module':<18} killed/total  score")
    for module in modules:
        killed, total, survivors = score(module, all_statuses)
        pct = f"{100 * killed / total:5.1f} %" if total else "  n/a"
        print(f"{module:<18} {killed:>6}/{total:<5} {pct}")
        for name in survivors:
            print(f"    survived: {name} ({all_statuses[name]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
