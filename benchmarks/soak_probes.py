"""What benchmarks/soak.py measures of each process and of the data directory, from /proc
(Linux): the process tree under each started service, its RSS, open file descriptors and
threads, and the bytes under a folder."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path


def process_tree(root_pids: dict[str, int]) -> dict[str, list[int]]:
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                children[int(stat[stat.rindex(")") + 2:].split()[1])].append(int(entry))
            except (OSError, ValueError):
                continue
    tree = {}
    for name, pid in root_pids.items():
        todo, seen = [pid], []
        while todo:
            p = todo.pop()
            seen.append(p)
            todo.extend(children.get(p, []))
        tree[name] = seen
    return tree


def proc_figures(pids: list[int]) -> dict:
    rss = fds = threads = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            rss += int(fields["VmRSS"].split()[0]) * 1024
            threads += int(fields["Threads"])
            fds += len(os.listdir(f"/proc/{pid}/fd"))
        except (OSError, KeyError, ValueError):
            continue
    return {"rss_bytes": rss, "fds": fds, "threads": threads}


def dir_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total
