#!/usr/bin/env bash
# The end-to-end demo on the default face model (ICT), offline: photos → gallery → skull query →
# re-synthesis → HTML case report. `make demo` runs it; sizes can be changed:
#   PERSONS=12 PER_PERSON=2 SYNTH=3000 bash demo/run.sh demo-out
# What is synthetic (said again in the output): the photos are renders of random heads of the
# default model (they go through the real dlib detector and encoder), the extra SYNTH faces have no
# photos (codes from the model's prior), and the skull is made under one gallery face.
set -euo pipefail
OUT=${1:-demo-out}
PERSONS=${PERSONS:-12}
PER_PERSON=${PER_PERSON:-2}
SYNTH=${SYNTH:-3000}
PERSON=${PERSON:-person_05}
PY=${PYTHON:-python}
SS=${SKULLSEARCH:-skullsearch}
here=$(cd "$(dirname "$0")" && pwd)
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

rm -rf "$OUT/photos" "$OUT/gallery" "$OUT/case" "$OUT/reconstruction" "$OUT/report.html" "$OUT/query.json"
mkdir -p "$OUT"

step "1. photos: $PERSONS persons × $PER_PERSON synthetic portraits (renders of the default model)"
run "$PY" "$here/data.py" photos "$OUT/photos" --persons "$PERSONS" --per-person "$PER_PERSON"

step "2. gallery: the photos through the real detector and encoder, plus $SYNTH photo-less synthetic faces"
run "$SS" ingest "$OUT/photos" --gallery "$OUT/gallery" --person-from-parent-dir
if [ "$SYNTH" -gt 0 ]; then run "$SS" synth --gallery "$OUT/gallery" --faces "$SYNTH" --seed 7; fi
run "$SS" info --gallery "$OUT/gallery"

step "3. the query skull, made under $PERSON's gallery face (synthetic, T-Table depths ±0.5 SD, random pose)"
run "$PY" "$here/data.py" skull --gallery "$OUT/gallery" --person "$PERSON" --out "$OUT/case"
run "$SS" landmarks "$OUT/case/skull.ply" --export "$OUT/case/skull_pegs.ply" --profile "$OUT/case/skull_profile.png"

step "4. query: shortlist, exact superimposition scores, ranked table (recorded in the audit log)"
run "$SS" query "$OUT/case/skull.ply" --gallery "$OUT/gallery" --top 10 --json "$OUT/query.json"
run "$PY" "$here/data.py" check "$OUT/query.json" --truth "$OUT/case/truth.json"

step "5. reconstruct: the top 3 faces re-synthesized through the skull's extended landmarks"
run "$SS" reconstruct "$OUT/case/skull.ply" --gallery "$OUT/gallery" --candidates 3 --out "$OUT/reconstruction"

step "6. the case report (for the query reconstruct recorded: the same answer as step 4)"
qid=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['query_id'])" "$OUT/reconstruction/reconstruction.json")
run "$SS" report "$qid" --gallery "$OUT/gallery" --reconstruction "$OUT/reconstruction" --out "$OUT/report.html"

cat <<MSG

Done. Open $OUT/report.html in a browser (it needs no network).
Synthetic parts: the photos (renders of the default model's random heads; real detector and
encoder), the $SYNTH extra faces (no photos) and the skull (made under a gallery face).
On real data: skullsearch ingest /your/photos --gallery G [--face-model FLAME.pkl], then
skullsearch query skull.ply --gallery G --report report.html with the skull's landmarks in
skull.landmarks.json (see the README).
MSG
