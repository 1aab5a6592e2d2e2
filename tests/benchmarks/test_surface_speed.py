"""benchmarks/surface_speed.py on a small gallery: it times both rankings and finds the truth."""

from __future__ import annotations

import json

from benchmark_scripts import load


def test_surface_speed_times_both_rankings(capsys):
    load("surface_speed").main(["--faces", "300", "--queries", "2"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["faces"] == 300 and set(out["median_seconds"]) == {"likelihood", "surface"}
    assert out["median_seconds"]["surface"] > 0 and out["ratio"] > 0
    assert all(r is not None and r <= 3 for r in out["truth_rank"]["surface"])  # skulls of gallery faces
