"""Anthropometry of sampled faces against published adult norms.

Faces are drawn from each model's own prior (shape ~ N(0, shape_std²), neutral expression and
pose) and measured as in :mod:`skullsearch.encoder.anthropometry`: head length g–op, head breadth
eu–eu, face height n–gn, bizygomatic breadth zy–zy, nose breadth al–al, mouth breadth ch–ch.
The norms are Farkas (1994), North American Caucasian adults 18–25, men and women pooled (see
that module for the figures and the caveat on their transcription). A model passes a
measurement when its mean lies within 1 norm SD of the norm's mean and its SD within a factor
1.5 of the norm's SD.

    python benchmarks/anthropometry.py [--faces 1000] [--seed 0] [--models ict anny]
"""

from __future__ import annotations

import argparse

from _common import emit

from skullsearch import FaceModel
from skullsearch.encoder.anthropometry import compare


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--faces", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", nargs="+", default=["ict", "anny"])
    a = p.parse_args()
    result = {"faces": a.faces, "seed": a.seed, "norms": "Farkas 1994 NAW 18-25, sexes pooled"}
    for name in a.models:
        rows = compare(FaceModel.builtin(name), n=a.faces, seed=a.seed)
        print(f"\n{name}: {a.faces} faces from the prior (mm)")
        print(f"{'measure':8s} {'what':20s} {'model':>14s} {'adult norm':>14s} {'off (SD)':>9s} "
              f"{'SD ratio':>9s}  pass")
        for r in rows:
            ok = r["mean_off_sd"] <= 1.0 and 1 / 1.5 <= r["sd_ratio"] <= 1.5
            r["pass"] = ok
            print(f"{r['measure']:8s} {r['what']:20s} {r['model_mean']:7.1f} ± {r['model_sd']:4.1f} "
                  f"{r['norm_mean']:7.1f} ± {r['norm_sd']:4.1f} {r['mean_off_sd']:9.2f} "
                  f"{r['sd_ratio']:9.2f}  {'yes' if ok else 'NO'}")
        result[name] = {r["measure"]: {k: round(v, 3) if isinstance(v, float) else v
                                       for k, v in r.items() if k not in ("measure", "what")}
                        for r in rows}
        result[name + "_passed"] = sum(r["pass"] for r in rows)
    emit(result)


if __name__ == "__main__":
    main()
