"""A small z-buffered triangle rasterizer and Lambertian renderer, vectorized numpy, CPU.

Used to make synthetic photos with known ground truth (they go through the real landmark
detector) and to place landmarks on a model by detecting them on its renders. Cameras follow
the OpenCV convention: ``X_cam = R · X + t``, x right, y down, z forward; pixels
``u = f · X/Z + cx`` (perspective) or ``u = s · X + cx`` (orthographic).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Camera:
    """rotation (3, 3), translation (3,) mm, focal length in pixels (perspective) or pixels
    per mm (orthographic), image size (width, height) pixels."""

    rotation: np.ndarray
    translation: np.ndarray
    focal: float
    width: int
    height: int
    orthographic: bool = False

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """(n, 3) mm face frame → (n, 3) camera frame."""
        return points @ np.asarray(self.rotation).T + np.asarray(self.translation)

    def project(self, points: np.ndarray) -> np.ndarray:
        """(n, 3) face-frame points → (n, 3): pixel u, v and camera depth z (mm)."""
        pc = self.to_camera(np.asarray(points, dtype=np.float64))
        cx, cy = self.width / 2.0, self.height / 2.0
        if self.orthographic:
            uv = pc[:, :2] * self.focal + (cx, cy)
        else:
            uv = pc[:, :2] / pc[:, 2:3] * self.focal + (cx, cy)
        return np.concatenate([uv, pc[:, 2:3]], axis=1)


def face_camera(
    yaw_deg: float = 0.0,
    pitch_deg: float = 0.0,
    distance: float = 600.0,
    size: int | tuple[int, int] = 400,
    focal: float | None = None,
    orthographic: bool = False,
    fov_mm: float = 260.0,
    center: np.ndarray | None = None,
) -> Camera:
    """A camera looking at the face (its +z side) from ``distance`` mm.

    yaw turns the head to the subject's left (positive yaw shows the right cheek), pitch tilts it
    up. ``fov_mm``: the width of the scene the image spans at the face (sets the focal length).
    """
    width, height = (size, size) if isinstance(size, int) else size
    y, p = np.deg2rad(yaw_deg), np.deg2rad(pitch_deg)
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    flip = np.diag([1.0, -1.0, -1.0])  # face frame (y up, z to viewer) → OpenCV
    rot = flip @ rx @ ry
    c = np.zeros(3) if center is None else np.asarray(center, dtype=np.float64)
    trans = -rot @ c + np.array([0.0, 0.0, distance])
    if focal is None:
        focal = width / fov_mm if orthographic else width * distance / fov_mm
    return Camera(rot, trans, float(focal), width, height, orthographic)


def camera_yaw(rotation) -> np.ndarray:
    """The yaw in degrees of face → camera rotations (..., 3, 3) as :func:`face_camera` makes them
    (and the fit's ``camera_rotation``): positive shows the right cheek; pitch and roll aside."""
    r = np.asarray(rotation, np.float64)
    return np.degrees(np.arctan2(r[..., 0, 2], r[..., 0, 0]))


def yaw_bins(yaw_deg, edges) -> np.ndarray:
    """The bin of each yaw (degrees) among ``edges`` (n + 1,) rising: bin i holds
    edges[i] ≤ yaw < edges[i + 1], the outer bins open-ended. int64, yaw's shape."""
    return np.searchsorted(np.asarray(edges, np.float64)[1:-1], yaw_deg, side="right")


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals: (V, 3), (F, 3) → (V, 3)."""
    return vertex_normals_batch(np.asarray(vertices)[None], faces)[0]


def vertex_normals_batch(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals of meshes sharing a triangle list: (B, V, 3), (F, 3) →
    (B, V, 3) float64."""
    tri = vertices[:, faces]  # (B, F, 3, 3)
    fn = np.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0])  # (B, F, 3)
    b, n_v = vertices.shape[:2]
    out = np.zeros((b * n_v, 3))
    offs = (np.arange(b) * n_v)[:, None]
    for k in range(3):  # three scatter-adds over the whole batch
        np.add.at(out, (faces[None, :, k] + offs).reshape(-1), fn.reshape(-1, 3))
    out = out.reshape(b, n_v, 3)
    return out / np.maximum(np.linalg.norm(out, axis=2, keepdims=True), 1e-12)


def pixel_boxes(tri: np.ndarray, valid: np.ndarray, width: int, height: int):
    """Pixel-centre bounding boxes of screen triangles (T, 3, ≥2) (u, v in pixels; ``valid``
    (T,) bool): x0, y0 (T,) int64 first pixel and w, h (T,) pixel counts (0 for invalid or
    off-screen triangles)."""
    x0 = np.clip(np.ceil(tri[:, :, 0].min(1) - 0.5), 0, width).astype(np.int64)
    x1 = np.clip(np.floor(tri[:, :, 0].max(1) - 0.5), -1, width - 1).astype(np.int64)
    y0 = np.clip(np.ceil(tri[:, :, 1].min(1) - 0.5), 0, height).astype(np.int64)
    y1 = np.clip(np.floor(tri[:, :, 1].max(1) - 0.5), -1, height - 1).astype(np.int64)
    w = np.where(valid, np.maximum(x1 - x0 + 1, 0), 0)
    h = np.where(valid, np.maximum(y1 - y0 + 1, 0), 0)
    return x0, y0, w, h


def rasterize(
    screen: np.ndarray, faces: np.ndarray, width: int, height: int, perspective: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Z-buffer rasterization at pixel centres.

    screen: (V, 3) pixel u, v and positive depth; faces: (F, 3).
    Returns face_id (H, W) int64 (-1 = background), bary (H, W, 3) float (perspective-correct
    barycentric weights of the 3D triangle) and depth (H, W) (inf = background).
    Both windings are drawn (no back-face culling); the nearest surface wins.
    """
    tri = screen[faces]  # (F, 3, 3)
    valid = np.all(tri[:, :, 2] > 0, axis=1) & np.all(np.isfinite(tri), axis=(1, 2))
    x0, y0, w, h = pixel_boxes(tri, valid, width, height)
    counts = w * h
    fid = np.repeat(np.arange(len(faces)), counts)
    local = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    px = x0[fid] + local % w[fid]
    py = y0[fid] + local // w[fid]
    t = tri[fid]
    pu, pv = px + 0.5, py + 0.5
    a, b, c = t[:, 0], t[:, 1], t[:, 2]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    safe = np.where(np.abs(area) < 1e-12, 1.0, area)
    w0 = ((b[:, 0] - pu) * (c[:, 1] - pv) - (b[:, 1] - pv) * (c[:, 0] - pu)) / safe
    w1 = ((c[:, 0] - pu) * (a[:, 1] - pv) - (c[:, 1] - pv) * (a[:, 0] - pu)) / safe
    w2 = 1.0 - w0 - w1
    inside = (np.abs(area) >= 1e-12) & (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
    bary = np.stack([w0, w1, w2], 1)[inside]
    t, fid, px, py = t[inside], fid[inside], px[inside], py[inside]
    if perspective:  # screen-space weights → 3D weights: b_i / z_i, renormalized
        bary = bary / t[:, :, 2]
        bary /= bary.sum(1, keepdims=True)
    depth = (bary * t[:, :, 2]).sum(1)
    pix = py * width + px
    order = np.lexsort((depth, pix))
    pix_sorted = pix[order]
    # the nearest surface of each covered pixel (none: a mesh out of view renders as background)
    first = order[np.r_[True, pix_sorted[1:] != pix_sorted[:-1]]] if len(pix) else order
    face_id = np.full(height * width, -1, np.int64)
    bary_img = np.zeros((height * width, 3))
    depth_img = np.full(height * width, np.inf)
    face_id[pix[first]] = fid[first]
    bary_img[pix[first]] = bary[first]
    depth_img[pix[first]] = depth[first]
    return (face_id.reshape(height, width), bary_img.reshape(height, width, 3),
            depth_img.reshape(height, width))


@dataclass
class Render:
    """image (H, W, 3) uint8, face_id (H, W) int64 (-1 background), bary (H, W, 3), depth (H, W)."""

    image: np.ndarray
    face_id: np.ndarray
    bary: np.ndarray
    depth: np.ndarray


def in_shadow(vertices: np.ndarray, faces: np.ndarray, points: np.ndarray, light: np.ndarray,
              normals: np.ndarray | None = None, size: int = 512, bias_mm: float = 1.0) -> np.ndarray:
    """Which points (n, 3) mm the mesh (vertices (V, 3) mm, faces (F, 3)) hides from a
    directional light (3,) (towards the light): a shadow map, the mesh's depth along the light
    drawn orthographically on ``size`` px over its extent; a point more than ``bias_mm`` behind
    the surface the light meets first is in shadow (plus, given the points' unit normals (n, 3),
    two map pixels' depth change along the surface's slope to the light, so that a surface the
    light grazes does not shadow itself). Returns (n,) bool."""
    light = np.asarray(light, np.float64) / np.linalg.norm(light)
    helper = np.array([0.0, 1.0, 0.0]) if abs(light[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
    x = np.cross(helper, light)
    x /= np.linalg.norm(x)
    frame = np.stack([x, np.cross(light, x), -light])  # rows: map axes u, v and the depth away from the light
    v, p = vertices @ frame.T, np.asarray(points, np.float64) @ frame.T
    lo, hi = v[:, :2].min(0), v[:, :2].max(0)
    k = (size - 2) / max(float((hi - lo).max()), 1e-9)  # px per mm, a pixel's margin
    z0 = v[:, 2].min() - 1.0  # depths positive
    screen = np.c_[(v[:, :2] - lo) * k + 1, v[:, 2] - z0]
    _, _, depth = rasterize(screen, faces, size, size, perspective=False)
    col = np.clip(np.floor((p[:, 0] - lo[0]) * k + 1).astype(np.int64), 0, size - 1)
    row = np.clip(np.floor((p[:, 1] - lo[1]) * k + 1).astype(np.int64), 0, size - 1)
    bias = np.full(len(p), bias_mm)
    if normals is not None:
        cos = np.clip(np.abs(np.asarray(normals) @ light), 0.1, 1.0)
        bias += 2.0 / k * np.sqrt(1 - cos**2) / cos
    return p[:, 2] - z0 > depth[row, col] + bias


def render_mesh(
    vertices: np.ndarray,
    faces: np.ndarray,
    camera: Camera,
    albedo: np.ndarray | tuple = (0.78, 0.62, 0.52),
    light_dir: tuple = (0.3, 0.4, 1.0),
    ambient: float = 0.3,
    background: tuple = (255, 255, 255),
    specular: float = 0.0,
    shininess: float = 20.0,
    gamma: float = 1.0,
    shadows: bool = False,
) -> Render:
    """Lambertian render of a mesh, one directional light (given in the face frame), with an
    optional white Blinn-Phong highlight (``specular`` its strength, 0: none); ``gamma``: the
    camera's encoding of the face's linear light (pixel = light^(1/gamma); 2.2 about a photo's
    sRGB, 1: the light as it is; the background is not encoded); ``shadows``: the mesh casts
    shadows (a point the light does not reach, :func:`in_shadow`, gets the ambient light alone).

    vertices: (V, 3) mm face frame; faces (F, 3); albedo: RGB in [0, 1], per mesh (3,) or per
    vertex (V, 3). Returns a :class:`Render`.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    screen = camera.project(vertices)
    face_id, bary, depth = rasterize(screen, faces, camera.width, camera.height,
                                     perspective=not camera.orthographic)
    normals = vertex_normals(vertices, faces)
    # Face the camera: a normal pointing away (inner side / inconsistent winding) is flipped.
    view = -(np.asarray(camera.rotation).T @ np.array([0.0, 0.0, 1.0]))  # towards the camera
    hit = face_id >= 0
    corner = faces[face_id[hit]]  # (n, 3)
    n = (normals[corner] * bary[hit][..., None]).sum(1)
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    n *= np.where((n @ view) < 0, -1.0, 1.0)[:, None]
    light = np.asarray(light_dir, dtype=np.float64)
    light /= np.linalg.norm(light)
    lit = np.ones(len(n))
    if shadows:
        points = (vertices[corner] * bary[hit][..., None]).sum(1)
        lit = (~in_shadow(vertices, faces, points, light, n)).astype(np.float64)
    shade = ambient + (1 - ambient) * np.clip(n @ light, 0, None) * lit
    alb = np.asarray(albedo, dtype=np.float64)
    col = (alb[corner] * bary[hit][..., None]).sum(1) if alb.ndim == 2 else alb[None]
    img = np.empty((camera.height, camera.width, 3))
    img[:] = np.asarray(background, dtype=np.float64) / 255.0
    out = col * shade[:, None]
    half = light + view  # the view direction of the image centre stands for every pixel's
    if specular > 0 and np.linalg.norm(half) > 1e-9:  # (a light straight from behind: none)
        half /= np.linalg.norm(half)
        out = out + specular * (np.clip(n @ half, 0, None) ** shininess * (n @ light > 0) * lit)[:, None]
    img[hit] = np.clip(out, 0, 1) ** (1.0 / gamma)
    return Render((img * 255 + 0.5).astype(np.uint8), face_id, bary, depth)


def random_portrait(vertices: np.ndarray, faces: np.ndarray, rng: np.random.Generator,
                    max_yaw: float = 30.0, size: int = 512,
                    texture: TextureRegions | None = None, gamma: float = 1.0,
                    shadows: bool = False, light_up: tuple[float, float] | None = None,
                    lights: list | None = None, distance_scale: float = 1.0) -> tuple[Render, Camera]:
    """A synthetic portrait photo of a posed face (V, 3) mm: a perspective camera at yaw
    ±max_yaw°, pitch ±10°, 0.5–0.9 m away (× ``distance_scale``: 0.386 puts it 19–35 cm away, a
    selfie's; the face fills the frame alike, so the focal length shrinks with it), a 260–340 mm
    field; random skin tone and light.
    With ``texture`` (:func:`texture_regions` of the face's model) the face also gets a random
    albedo map (:func:`random_albedo`: brows, lips, eyes, lashes, blotches, sometimes a beard) and
    a specular highlight; without, one skin colour (the same random draws as before textures
    existed, so that untextured benchmarks are unchanged). gamma: the camera's encoding,
    shadows: cast shadows (:func:`render_mesh`; the same draws either way). light_up: the
    light's elevation above the horizon drawn uniformly between these two angles (degrees; the
    same draws, so the faces, cameras and skins are those of the default lights); None: the
    default lights, (x, y, 1) with x in ±0.5 and y in 0–0.6, at most about 31° up — lower than
    real portraits' lights often stand (benchmarks' ``--light-up``); ``lights``: a list that gets
    the light's direction (3,) (:func:`portrait_light`).
    Returns the :class:`Render` (image and triangle/barycentric buffers) and its camera."""
    cam = face_camera(yaw_deg=rng.uniform(-max_yaw, max_yaw), pitch_deg=rng.uniform(-10, 10),
                      size=size, distance=rng.uniform(500, 900) * distance_scale,
                      fov_mm=rng.uniform(260, 340),
                      center=np.array([0.0, -30.0, 0.0]))
    albedo = random_skin_tone(rng)
    light = portrait_light(rng, light_up)
    if lights is not None:
        lights.append(light)
    if texture is None:
        return render_mesh(vertices, faces, cam, albedo=albedo, light_dir=light, gamma=gamma,
                           shadows=shadows), cam
    albedo = random_albedo(texture, rng, albedo)
    spec, shine = rng.uniform(0.03, 0.25), rng.uniform(8.0, 40.0)
    return render_mesh(vertices, faces, cam, albedo=albedo, light_dir=light, specular=spec,
                       shininess=shine, gamma=gamma, shadows=shadows), cam


def portrait_light(rng: np.random.Generator, light_up: tuple[float, float] | None = None
                   ) -> tuple[float, float, float]:
    """A random portrait light's direction (x, y, z) in the face frame (x sideways, y up, z
    towards the viewer; not normalized), two draws of rng: x in ±0.5 (z = 1) and its
    height; None: y in 0–0.6 (at most about 31° above the horizon), else the same draw read as
    the elevation's place between light_up's two angles (degrees) — the same stream of draws
    either way, so the rest of a portrait (skin, texture) is unchanged."""
    x, y = rng.uniform(-0.5, 0.5), rng.uniform(0.0, 0.6)
    if light_up is None:
        return (x, y, 1.0)
    lo, hi = (float(v) for v in light_up)
    if not -90 < lo <= hi < 90:
        raise ValueError(f"light_up must be two angles LO <= HI strictly between -90 and 90 degrees, "
                         f"got {tuple(light_up)}")
    return raised((x, 0.0, 1.0), lo + (hi - lo) * y / 0.6)


def raised(light, degrees: float) -> tuple[float, float, float]:
    """The direction (x, y, z) of light (3,) from the same side (x, z kept), its height y set so
    that it stands ``degrees`` above the horizon (y up; not normalized)."""
    x, _, z = (float(v) for v in light)
    return (x, float(np.tan(np.radians(degrees)) * np.hypot(x, z)), z)


def light_elevation(light) -> float:
    """A light direction's (3,) elevation above the horizon, degrees (y up): :func:`raised`'s inverse."""
    light = np.asarray(light, dtype=np.float64)
    return float(np.degrees(np.arcsin(light[1] / np.linalg.norm(light))))


def random_skin_tone(rng: np.random.Generator) -> np.ndarray:
    """A random skin colour (3,) RGB in [0, 1]: one draw, darker to lighter."""
    return np.array([0.8, 0.62, 0.5]) * rng.uniform(0.6, 1.1)


def largest_component(faces: np.ndarray) -> np.ndarray:
    """Triangle ids of the mesh's largest edge-connected part (the skin: drops eyeballs, teeth,
    tongue). faces (F, 3) int → (n,) int64, sorted. The same parts as trimesh's face adjacency
    gives, in numpy alone (importing trimesh or scipy's graph module costs about a second of
    CPU on the fitting path)."""
    faces = np.asarray(faces, dtype=np.int64)
    if not len(faces):
        return np.zeros(0, np.int64)
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    owner = np.tile(np.arange(len(faces)), 3)
    order = np.lexsort((edges[:, 1], edges[:, 0]))
    same = np.all(edges[order[1:]] == edges[order[:-1]], axis=1)
    a, b = owner[order[1:]][same], owner[order[:-1]][same]  # faces sharing an edge
    # connected components: every face takes the smallest label of its neighbours, labels
    # jump to their own label's label, until each shared edge joins equal labels
    labels = np.arange(len(faces))
    while True:
        m = np.minimum(labels[a], labels[b])
        np.minimum.at(labels, a, m)
        np.minimum.at(labels, b, m)
        labels = labels[labels]
        if np.array_equal(labels[a], labels[b]):
            break
    return np.flatnonzero(labels == np.bincount(labels).argmax()).astype(np.int64)


# ---------------------------------------------------------------- synthetic skin texture
@dataclass(frozen=True)
class TextureRegions:
    """Where a face model's features lie, as per-vertex weights in [0, 1] (V,) placed once on
    its mean face from its 68 landmarks, for :func:`random_albedo`. brows: bands under the brow
    landmarks (17–26), tapering to the tails (a face's own brows: :func:`random_albedo` moves and
    widens them, from brow_depth, each vertex's mm under the brow landmarks' line, and brow_width,
    the band's relative half-width there); lips: inside the outer lip contour (48–59); lashes:
    the upper lid's line (36–39, 42–45); beard: the skin below the mouth corners and above the
    upper lip, in front of the jaw; iris, pupil: the front caps of the eyeballs (the parts off
    the skin); skin: (V,) bool; vertices: the mean face (V, 3) mm."""

    brows: np.ndarray
    lips: np.ndarray
    lashes: np.ndarray
    beard: np.ndarray
    iris: np.ndarray
    pupil: np.ndarray
    skin: np.ndarray
    vertices: np.ndarray
    brow_depth: np.ndarray
    brow_width: np.ndarray


def _polyline_distance(points: np.ndarray, line: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance (n,) of 2D points (n, 2) from a polyline (k, 2), and where along it (n,) in
    [0, 1] (arc length) the nearest point lies."""
    a, b = line[:-1], line[1:]  # (k-1, 2)
    ab = b - a
    t = np.clip(((points[:, None] - a) * ab).sum(-1) / np.maximum((ab**2).sum(-1), 1e-12), 0, 1)
    d = np.linalg.norm(points[:, None] - (a + t[..., None] * ab), axis=-1)  # (n, k-1)
    seg = d.argmin(1)
    lengths = np.linalg.norm(ab, axis=1)
    cum = np.concatenate([[0.0], np.cumsum(lengths)])
    along = (cum[seg] + t[np.arange(len(points)), seg] * lengths[seg]) / max(cum[-1], 1e-12)
    return d[np.arange(len(points)), seg], along


def _inside_polygon(points: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """(n,) bool: 2D points (n, 2) inside the closed polygon (k, 2) (even-odd rule)."""
    x, y = points[:, :1], points[:, 1:]
    a, b = poly, np.roll(poly, -1, axis=0)
    cross = (a[:, 1] > y) != (b[:, 1] > y)
    dy = np.where(b[:, 1] == a[:, 1], 1e-12, b[:, 1] - a[:, 1])
    xi = a[:, 0] + (y - a[:, 1]) * (b[:, 0] - a[:, 0]) / dy
    return ((cross & (x < xi)).sum(1) % 2) == 1


def anatomical_landmarks(model) -> np.ndarray:
    """(68, 3) mm: where a face model's 68 landmarks lie on its mean face by its source's own
    annotation (``meta["source_landmarks68"]``: the ICT model's Multi-PIE vertices), else by its
    fitting embedding. The fitting embedding of the default model is calibrated to dlib on
    untextured renders — where dlib sees no brows, it puts them about 6 mm under the source's
    (on the brow ridge's shading) — so a texture's brows and lips are placed by the source."""
    import torch

    v = np.asarray(model.v_template, dtype=np.float64)
    ids = (getattr(model, "meta", None) or {}).get("source_landmarks68")
    if ids is not None and len(ids) == 68:
        return v[np.asarray(ids, np.int64)]
    with torch.no_grad():
        return model.landmarks68(vertices=torch.as_tensor(v[None], dtype=torch.float32))[0].double().numpy()


def texture_regions(model, landmarks: np.ndarray | None = None) -> TextureRegions:
    """The feature regions of a face model's mean face (:class:`TextureRegions`), from 68
    landmarks on it (68, 3) mm (x right, y up, z to the front; default
    :func:`anatomical_landmarks`) and its skin (the largest connected part)."""
    v = np.asarray(model.v_template, dtype=np.float64)
    lm = anatomical_landmarks(model) if landmarks is None else np.asarray(landmarks, np.float64)
    faces = np.asarray(model.faces)
    skin = np.zeros(len(v), bool)
    skin[np.unique(faces[largest_component(faces)])] = True
    normals = vertex_normals(v, faces)
    outward = np.sign(((v - v.mean(0)) * normals).sum(1).mean()) or 1.0
    front = skin & (outward * normals[:, 2] > 0.25) & (v[:, 2] > lm[:, 2].max() - 45)
    xy = v[:, :2]

    def soft(d, half, edge):  # 1 inside half, 0 beyond half + edge
        return np.clip((half + edge - d) / edge, 0, 1)

    brow_depth = np.full(len(v), np.inf)  # mm under the brow landmarks' line (negative: above)
    brow_width = np.ones(len(v))  # the band's relative half-width: 1 at the head, 0.5 at the tail
    for ids in (range(17, 22), range(22, 27)):
        line = lm[list(ids), :2]
        d, along = _polyline_distance(xy, line)
        order = np.argsort(line[:, 0])
        below = xy[:, 1] < np.interp(xy[:, 0], line[order, 0], line[order, 1])
        closer = (d < np.abs(brow_depth)) & front
        brow_depth[closer] = np.where(below, d, -d)[closer]
        outer = along if ids.start == 17 else 1 - along  # 0 at the tail (the face's side)
        brow_width[closer] = (0.5 + 0.5 * np.clip(outer * 1.5, 0, 1))[closer]
    brows = _brow_band(brow_depth, brow_width, 2.5, 3.0)
    lip_poly = lm[48:60, :2]
    inside = _inside_polygon(xy, lip_poly)
    d_edge, _ = _polyline_distance(xy, np.vstack([lip_poly, lip_poly[:1]]))
    lips = np.where(inside, 1.0, soft(d_edge, 0.0, 1.0)) * front
    lashes = np.zeros(len(v))
    for ids in ([36, 37, 38, 39], [42, 43, 44, 45]):
        d, _ = _polyline_distance(xy, lm[ids, :2])
        lashes = np.maximum(lashes, soft(d, 0.6, 0.8))
    lashes *= front
    mouth_y = lm[[48, 54], 1].mean()
    ax = np.abs(xy[:, 0])
    below = soft(xy[:, 1] - mouth_y, 0.0, 4.0) * soft(ax - np.abs(lm[[4, 12], 0]).mean(), 0.0, 6.0)
    above = (soft(lm[51, 1] - xy[:, 1], 0.0, 1.0) * soft(xy[:, 1] - lm[33, 1], -2.0, 2.0)
             * soft(ax - np.abs(lm[48, 0] - lm[54, 0]) / 2, 3.0, 4.0))
    beard = np.maximum(below, above) * front * (1 - lips)
    iris = np.zeros(len(v))
    pupil = np.zeros(len(v))
    eye = ~skin
    for side in (v[:, 0] < 0, v[:, 0] >= 0):
        part = eye & side
        if part.sum() < 4:
            continue
        lo, hi = v[part].min(0), v[part].max(0)
        pole = v[part][v[part, 2].argmax(), :2]  # the front pole, seen from the front
        r = (hi[0] - lo[0]) / 2
        off = np.linalg.norm(v[part, :2] - pole, axis=1) / max(r, 1e-9)
        front_half = v[part, 2] > (lo[2] + hi[2]) / 2
        iris[part] = front_half * soft(off, 0.45, 0.05)  # an iris ~11 mm across a 24 mm eyeball
        pupil[part] = front_half * soft(off, 0.15, 0.03)
    return TextureRegions(brows, lips, lashes, beard, iris, pupil, skin, v, brow_depth, brow_width)


#: the features :func:`feature_mask` knows: the brows, the lips and the upper lids' lash lines
FEATURE_PARTS = ("brows", "lips", "lashes")


def feature_mask(model, margin_mm: float = 3.0, parts: tuple[str, ...] = FEATURE_PARTS) -> np.ndarray:
    """(V,) bool: the skin of a face model's features whose colour is their own, not the skin's —
    brows (from ``margin_mm`` above the brow landmarks' line to 5 mm + ``margin_mm`` under it),
    lips and the upper lids' lash line, each widened by ``margin_mm`` — on its mean face, placed by
    its source's annotation (:func:`texture_regions`, :func:`anatomical_landmarks`). A real face's
    brows and lips sit where its landmarks say, give or take a few millimetres: the margin.
    parts: which of :data:`FEATURE_PARTS`."""
    from scipy.spatial import cKDTree

    unknown = set(parts) - set(FEATURE_PARTS)
    if unknown:
        raise ValueError(f"unknown feature parts {sorted(unknown)}: choose from {FEATURE_PARTS}")
    r = texture_regions(model)
    brows = ((r.brow_depth > -margin_mm) & (r.brow_depth < 5.0 + margin_mm)) if "brows" in parts else False
    core = np.zeros(len(r.vertices), bool)
    if "lips" in parts:
        core |= r.lips > 0
    if "lashes" in parts:
        core |= r.lashes > 0
    near = np.zeros(len(r.vertices), bool)
    if core.any():
        d, _ = cKDTree(r.vertices[core]).query(r.vertices, distance_upper_bound=margin_mm + 1e-9)
        near = np.isfinite(d)
    return (brows | near) & r.skin


def _brow_band(depth: np.ndarray, width: np.ndarray, offset: float, half: float) -> np.ndarray:
    """(V,) weights of a brow band centred ``offset`` mm under the brow landmarks' line, ``half``
    mm half-wide at its head (tapering by ``width``), with a 1 mm soft edge."""
    return np.clip((half * width + 1.0 - np.abs(depth - offset)) / 1.0, 0, 1)


def _paint(albedo: np.ndarray, weight: np.ndarray, colour) -> np.ndarray:
    """albedo (n, 3) blended towards colour ((3,) or (n, 3)) by weight (n,) in [0, 1]."""
    w = weight[:, None]
    return albedo * (1 - w) + colour * w


def random_albedo(regions: TextureRegions, rng: np.random.Generator, skin_tone) -> np.ndarray:
    """A random albedo map (V, 3) RGB in [0, 1] on the regions' model: the skin tone (3,) with
    slow blotches (±8 %) and a fine grain (±3 %), brows (1–4 mm under the brow landmarks, 3–8 mm
    thick at their heads) and lashes of a random hair colour, lips
    redder and darker, white-ish sclera, a brown to blue iris, a black pupil, and in a quarter of
    faces stubble or a beard (the hair colour at 30–70 %)."""
    tone = np.asarray(skin_tone, dtype=np.float64)
    v = regions.vertices
    n = len(v)
    alb = np.tile(tone, (n, 1))
    skin_ids = np.flatnonzero(regions.skin)
    centres = v[rng.choice(skin_ids, 8)]
    sigma = rng.uniform(10, 30, 8)
    amp = rng.uniform(-0.08, 0.08, (8, 3))
    amp[:, 0] += np.abs(amp[:, 1])  # redness: red rises where the blotch is
    w = np.exp(-((v[:, None] - centres) ** 2).sum(-1) / (2 * sigma**2))  # (V, 8)
    alb *= 1 + w @ amp
    alb *= 1 + rng.uniform(-0.03, 0.03, (n, 1))
    hair = rng.uniform(0.06, 0.45) * np.array([1.0, 0.8, 0.65]) * rng.uniform(0.85, 1.15, 3)
    density = rng.uniform(0.5, 0.95)
    brows = _brow_band(regions.brow_depth, regions.brow_width, rng.uniform(1.0, 4.0), rng.uniform(1.5, 4.0))
    alb = _paint(alb, brows * density, hair)
    alb = _paint(alb, regions.lashes * 0.8, hair * 0.5)
    lip = tone * np.array([0.95, 0.62, 0.65]) * rng.uniform(0.75, 1.0)
    alb = _paint(alb, regions.lips * rng.uniform(0.6, 1.0), lip)
    if rng.uniform() < 0.25:
        alb = _paint(alb, regions.beard * rng.uniform(0.3, 0.7), hair)
    eye = ~regions.skin
    iris = rng.choice([np.array([0.35, 0.22, 0.12]), np.array([0.3, 0.4, 0.55]),
                       np.array([0.3, 0.35, 0.2])]) * rng.uniform(0.6, 1.2)
    sclera = np.tile([0.85, 0.82, 0.78], (eye.sum(), 1))
    alb[eye] = _paint(_paint(sclera, regions.iris[eye], iris), regions.pupil[eye], 0.04)
    return np.clip(alb, 0, 1)
