"""Summarise a `py-spy record --format raw --threads` file: per thread, the functions with the
most samples on top of the stack (self) and anywhere in it (inclusive).

    .venv/bin/python bench/pyspy_top.py /tmp/prof/r1500.txt [--top 25] [--thread MainThread]
"""

from __future__ import annotations

import argparse
import collections
import re
import sys

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def short(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match["file"]
    for marker in ("site-packages/", "/gateway/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "/gateway/":
                path = "gateway/" + path
            break
    return f"{match['func']} ({path})"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--thread", help="only threads whose name contains this")
    args = parser.parse_args()
    per_thread: dict[str, list[tuple[list[str], int]]] = collections.defaultdict(list)
    for line in open(args.path, encoding="utf-8", errors="replace"):
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        thread = frames[0] if frames and frames[0].startswith(("thread", "process")) else "?"
        if thread.startswith("process") and len(frames) > 1 and frames[1].startswith("thread"):
            thread = frames[1]
            frames = frames[2:]
        elif thread != "?":
            frames = frames[1:]
        per_thread[thread].append((frames, int(count)))
    grand = sum(c for items in per_thread.values() for _, c in items)
    for thread, items in sorted(per_thread.items(), key=lambda kv: -sum(c for _, c in kv[1])):
        if args.thread and args.thread not in thread:
            continue
        total = sum(c for _, c in items)
        selfc: collections.Counter[str] = collections.Counter()
        incl: collections.Counter[str] = collections.Counter()
        for frames, count in items:
            if frames:
                selfc[short(frames[-1])] += count
            for name in {short(f) for f in frames}:
                incl[name] += count
        print(f"== {thread}: {total} samples ({100 * total / max(1, grand):.1f} % of all)")
        print("   self:")
        for name, count in selfc.most_common(args.top):
            print(f"   {100 * count / total:5.1f} %  {name}")
        print("   inclusive:")
        for name, count in incl.most_common(args.top):
            print(f"   {100 * count / total:5.1f} %  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
