"""`make demo` as a test, smaller: photos → ingest → synth → skull → query → reconstruct → report."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the whole demo, end to end, in a subprocess

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not (Path(sys.executable).parent / "skullsearch").exists(),
                    reason="the skullsearch console script is not installed next to this python")
def test_demo_runs_end_to_end_and_finds_the_true_person(tmp_path, default_model):
    env = dict(os.environ, PERSONS="4", PER_PERSON="2", SYNTH="150", PERSON="person_02",
               PYTHON=sys.executable, SKULLSEARCH=str(Path(sys.executable).parent / "skullsearch"))
    out = tmp_path / "demo"
    proc = subprocess.run(["bash", str(ROOT / "demo" / "run.sh"), str(out)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "the true person first" in log
    # every stage left its product
    truth = json.loads((out / "case" / "truth.json").read_text())
    result = json.loads((out / "query.json").read_text())
    assert result["candidates"][0]["person"] == truth["person"] == "person_02"
    recon = json.loads((out / "reconstruction" / "reconstruction.json").read_text())
    assert len(recon["candidates"]) == 3
    assert all((out / "reconstruction" / c["mesh"]).is_file() for c in recon["candidates"])
    assert all((out / "reconstruction" / c["profile"]).is_file() for c in recon["candidates"])
    assert (out / "case" / "skull_profile.png").is_file()
    assert all(c["s_after"] >= c["s_before"] for c in recon["candidates"])
    html = (out / "report.html").read_text(encoding="utf-8")
    assert recon["query_id"] in html and "<script src" not in html
    # it says plainly what is synthetic
    assert "Synthetic parts" in log and "renders of the default model" in log
