"""Start-up time of the `bld` command: help, a bad-input error, the edit path's imports, and the demo.

Each figure is the median of fresh processes (warm file cache: one untimed run first). Side by side with
bld's imports is the floor its dependencies set: importing diffusers' StableDiffusionPipeline (torch,
diffusers, transformers' CLIP text model), which any edit needs. Prints a table and one JSON line.

    python benchmarks/bench_startup.py            # about a minute on 2 CPU cores
    python benchmarks/bench_startup.py --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEPENDENCY_FLOOR = "from diffusers import StableDiffusionPipeline"  # what any diffusers SD edit imports


def seconds(command: list[str], runs: int, expect: int = 0) -> list[float]:
    subprocess.run(command, capture_output=True)  # warm the file cache
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if result.returncode != expect:
            raise SystemExit(f"{' '.join(command)} exited {result.returncode}: {result.stderr[-500:]}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    python = sys.executable
    bld = [python, "-m", "bld"]
    folder = Path(tempfile.mkdtemp(prefix="bld-startup-"))
    cases = {
        "bld --help": (bld + ["--help"], 0),
        "bld edit, missing image (error)": (bld + ["edit", str(folder / "absent.png"), str(folder / "m.png"), "x",
                                                   "-o", str(folder / "o.png")], 2),
        "import the edit path (bld.loading, bld.editing)": ([python, "-c", "import bld.loading, bld.editing"], 0),
        "import the dependencies' floor": ([python, "-c", DEPENDENCY_FLOOR], 0),
        "bld demo": (bld + ["demo", "-o", str(folder / "demo"), "--overwrite"], 0),
    }
    rows = {}
    for name, (command, expect) in cases.items():
        times = seconds(command, args.runs, expect)
        rows[name] = round(statistics.median(times), 3)
        print(f"{name:50s} {rows[name]:7.2f} s   (runs: {', '.join(f'{t:.2f}' for t in times)})", flush=True)
    overhead = rows["import the edit path (bld.loading, bld.editing)"] - rows["import the dependencies' floor"]
    print(f"bld's own import time over its dependencies' floor: {overhead:.2f} s")
    print(json.dumps({"benchmark": "startup", "seconds": rows, "import_overhead_s": round(overhead, 3),
                      "runs": args.runs, "cpus": os.cpu_count(), "machine": platform.machine(),
                      "python": platform.python_version()}))


if __name__ == "__main__":
    main()
