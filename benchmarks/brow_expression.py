"""Where dlib's brows sit on a set of photos, as the landmark fit sees them: each photo fitted with
dlib's default embedding (calibrated on untextured renders) and with its textured embedding
(``FitConfig(textured_embedding=True)``, calibrated on renders with brows painted by the face
model's source annotation), and per embedding the landmark residual and the mean of the brow
expression coefficients the fit gives (ARKit ``browDown`` / ``browInnerUp`` / ``browOuterUp``,
prior SD 0.3). A fit that raises the brows by expression says that dlib put the brows higher
than its embedding expects; one that lowers them, lower. No truth is needed: it tells which
embedding's brows the photos' brows are nearer to.

    python benchmarks/brow_expression.py DIR_OR_PHOTOS ...   (photos, or folders searched for them)

``benchmarks/ct_encoder.py --texture 1 --no-photometric --save DIR`` leaves the textured CT head's
renders in DIR. Prints one JSON line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _common import emit, mean_residual_px

from skullsearch import FaceModel
from skullsearch.encoder import code as code_layout
from skullsearch.encoder.encode import encode, image_paths
from skullsearch.encoder.fitting import FitConfig


def brow_expressions(model, paths, textured: bool) -> dict:
    """Faces found, mean landmark residual px and the mean brow coefficients of the fits."""
    faces = encode(paths, model=model, config=FitConfig(textured_embedding=textured), all_faces=False).faces
    names = model.meta["expression_names"]
    brow = [i for i, n in enumerate(names) if n.startswith("brow")]
    codes = np.stack([f.code for f in faces])[:, code_layout.SLICES["expression"]]
    return {"faces": len(faces), "residual_px": mean_residual_px(faces),
            "brow_expression": {names[i]: round(float(codes[:, i].mean()), 3) for i in brow}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inputs", type=Path, nargs="+")
    a = ap.parse_args(argv)
    paths = image_paths(a.inputs)
    if not paths:
        raise SystemExit(f"no photos in {', '.join(map(str, a.inputs))}")
    model = FaceModel.from_env()
    out = {"photos": len(paths), "default": brow_expressions(model, paths, False),
           "textured_embedding": brow_expressions(model, paths, True)}
    emit(out)
    return out


if __name__ == "__main__":
    main()
