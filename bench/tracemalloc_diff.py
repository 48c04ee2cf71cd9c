"""What grew between each web process's second and last tracemalloc snapshot (bench/web_tracemalloc_conf.py).

    python -m bench.tracemalloc_diff /tmp/snapshots [--top 15]

The first snapshot is skipped: it holds the process's warm-up (imports, first connections).
"""

import argparse
import tracemalloc
from collections import defaultdict
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    by_process: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(args.folder.glob("*.snapshot")):
        by_process[path.name.split("-")[0]].append(path)
    for pid, paths in sorted(by_process.items()):
        if len(paths) < 3:
            print(f"process {pid}: {len(paths)} snapshots, too few")
            continue
        first, last = tracemalloc.Snapshot.load(str(paths[1])), tracemalloc.Snapshot.load(str(paths[-1]))
        traced = sum(stat.size for stat in last.statistics("filename")) - sum(stat.size for stat in first.statistics("filename"))
        print(f"process {pid}: traced memory {traced / 2**20:+.2f} MiB from {paths[1].name} to {paths[-1].name}")
        for stat in last.compare_to(first, "traceback")[: args.top]:
            print(f"  {stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks")
            for line in stat.traceback.format()[-6:]:
                print(f"      {line}")


if __name__ == "__main__":
    main()
