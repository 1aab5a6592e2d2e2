"""Start-up time of the command line: ``skullsearch --help`` and ``skullsearch info`` on a small
gallery, each a fresh process (median of repeats), with what each one imports.

Goals (issue 14): --help ≤ 0.5 s, info ≤ 1.5 s on this machine. torch, FAISS, anny and dlib are
imported only by the commands that need them (the package's public names load on first use).

    python benchmarks/cli_speed.py [--repeats 5] [--faces 200]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import emit

HEAVY = ("torch", "faiss", "anny", "dlib", "duckdb", "pandas")


def timed(args: list[str], repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "skullsearch.cli", *args], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def imported(args: list[str]) -> list[str]:
    """Which of the heavy libraries a command imports."""
    code = ("import sys, runpy; sys.argv = ['skullsearch', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('skullsearch.cli', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    return [m for m in r.stderr.strip().splitlines()[-1].split(",") if m] if r.stderr.strip() else []


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--faces", type=int, default=200)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        g = str(Path(tmp) / "g")
        subprocess.run([sys.executable, "-m", "skullsearch.cli", "synth", "-g", g, "--faces", str(a.faces)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        res = {}
        for name, args, goal in (("help", ["--help"], 0.5), ("info", ["info", "-g", g], 1.5)):
            s = timed(args, a.repeats)
            res[name] = {"seconds": round(s, 3), "goal_s": goal, "met": s <= goal,
                         "imports": imported(args)}
            print(f"skullsearch {' '.join(args[:1])}: {s:.2f} s (goal ≤ {goal} s); imports "
                  f"{', '.join(res[name]['imports']) or 'none of ' + ', '.join(HEAVY)}")
    emit({"repeats": a.repeats, **res})


if __name__ == "__main__":
    main()
