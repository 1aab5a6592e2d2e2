"""benchmarks/persons.py and benchmarks/regression.py: small real runs."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
    sys.path.insert(0, str(ROOT / "benchmarks"))  # the benchmarks import their _common helpers
    spec = importlib.util.spec_from_file_location(f"skullsearch_bench_{name}",
                                                  ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_persons_on_rendered_heads_reports_every_figure(capsys):
    out = _load("persons").main(["--render", "3", "--per-person", "2", "--workers", "1", "--seed", "2"])
    assert out["truth"] == "synthetic (renders)" and out["faces"] >= 5 and out["persons"] == 3
    assert 0.5 < out["auc_descriptor"] <= 1 and 0 <= out["auc_shape_code"] <= 1
    assert [g["threshold"] for g in out["grouping"]] == [0.4, 0.5, 0.6]
    assert all(0 <= g["pair_precision"] <= 1 and 0 <= g["pair_recall"] <= 1 for g in out["grouping"])
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["faces"] == out["faces"]


@pytest.mark.slow
def test_the_regression_run_is_identical_to_itself_and_finds_a_change(tmp_path, capsys):
    reg = _load("regression")
    saved = tmp_path / "before.json"
    assert reg.main(["--faces", "300", "--save", str(saved)]) == 0
    assert reg.main(["--faces", "300", "--check", str(saved)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "identical"
    before = json.loads(saved.read_text())
    before["s"][0] += 0.01  # as if the code had changed a score
    saved.write_text(json.dumps(before))
    assert reg.main(["--faces", "300", "--check", str(saved)]) == 1
    assert "DIFFERS s:" in capsys.readouterr().out
