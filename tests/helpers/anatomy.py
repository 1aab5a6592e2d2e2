"""Anatomy checks of a model's 36 soft-tissue points on its mean face (shared by the model tests)."""

import numpy as np

from skullsearch import SOFT_TISSUE_NAMES
from skullsearch.encoder.soft_tissue import BILATERAL, MIDLINE


def check_anatomy(mean_points):
    """mean_points (36, 3) mm in the face frame."""
    p = {n: mean_points[i] for i, n in enumerate(SOFT_TISSUE_NAMES)}
    # midline points lie on the midsagittal plane
    for n in MIDLINE:
        assert abs(p[n][0]) < 1.5, n
    # bilateral points are mirror images and on their own side
    for key in BILATERAL:
        left, right = p[f"{key}_l"], p[f"{key}_r"]
        assert left[0] > 5 and right[0] < -5, key
        np.testing.assert_allclose(left * [-1, 1, 1], right, atol=1.5, err_msg=key)
    # top to bottom along the face profile
    order = ["g", "n", "mn", "rhi", "ss", "mp", "pr", "id", "sm", "pg", "gn", "me"]
    ys = [p[n][1] for n in order]
    assert all(a > b for a, b in zip(ys, ys[1:], strict=False)), dict(zip(order, ys, strict=True))
    assert p["v"][1] == max(q[1] for q in mean_points)  # vertex is the highest point
    assert p["op"][2] < p["v"][2] < p["g"][2]  # opisthocranion at the back
    assert p["op"][2] == min(q[2] for q in mean_points)
    # the nasal points are on the nose: in front of the eyes, behind the tip of the nose
    for n in ("mn", "rhi"):
        assert p[n][2] > p["mso_l"][2] and p[n][2] > p["n"][2]
    assert p["rhi"][2] > p["mn"][2]  # the dorsum comes forward
    assert p["n"][2] < p["g"][2]  # sellion is the hollow below glabella
    # supramentale: the labiomental fold, behind the chord from labrale inferius to pogonion
    li, pg, sm = p["id"][1:], p["pg"][1:], p["sm"][1:]
    t = (sm[0] - li[0]) / (pg[0] - li[0])
    assert 0 < t < 1 and sm[1] < li[1] + t * (pg[1] - li[1]) - 1.0
    assert p["me"][1] < p["gn"][1] < p["pg"][1]  # menton lowest, gnathion between
    # soft-tissue widths of a mean adult (mm)
    assert 120 < np.linalg.norm(p["zy_l"] - p["zy_r"]) < 160
    assert 90 < np.linalg.norm(p["go_l"] - p["go_r"]) < 140
    assert 25 < np.linalg.norm(p["ac_l"] - p["ac_r"]) < 45
    assert p["mso_l"][1] > p["mio_l"][1]  # above and below the eye
    assert 90 < np.linalg.norm(p["n"] - p["me"]) < 145  # face height
    assert 160 < np.linalg.norm(p["g"] - p["op"]) < 210  # head length


def render_annotation(model, mean_points, path):
    """Front and 60° renders of the mean face with its 68 landmarks (blue) and 36 soft-tissue
    points (red), saved to ``path`` for a person to look at."""
    from PIL import Image, ImageDraw

    from skullsearch.encoder.render import face_camera, render_mesh

    lm = model.landmarks68(batch_size=1)[0].numpy()
    panels = []
    for yaw in (0, 60):
        cam = face_camera(yaw_deg=yaw, size=500, orthographic=True, fov_mm=300,
                          center=np.array([0, -30, -40]))
        r = render_mesh(model.v_template, model.faces, cam)
        assert (r.face_id >= 0).mean() > 0.3
        im = Image.fromarray(r.image)
        draw = ImageDraw.Draw(im)
        for pts, col in ((lm, (30, 80, 230)), (mean_points, (220, 30, 30))):
            uvz = cam.project(pts)
            # draw only the points visible from this camera (z-buffer test)
            for k, (u, v_, z) in enumerate(uvz):
                row, colm = int(v_), int(u)
                if r.depth[row, colm] + 2.0 < z:
                    continue
                draw.ellipse([u - 3, v_ - 3, u + 3, v_ + 3], fill=col)
                if col[0] == 220:
                    draw.text((u + 4, v_ - 5), SOFT_TISSUE_NAMES[k], fill=(0, 0, 0))
        panels.append(im)
    sheet = Image.new("RGB", (1000, 500), "white")
    sheet.paste(panels[0], (0, 0))
    sheet.paste(panels[1], (500, 0))
    sheet.save(path)
