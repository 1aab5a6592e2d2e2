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


def render_mesh(
    vertices: np.ndarray,
    faces: np.ndarray,
    camera: Camera,
    albedo: np.ndarray | tuple = (0.78, 0.62, 0.52),
    light_dir: tuple = (0.3, 0.4, 1.0),
    ambient: float = 0.3,
    background: tuple = (255, 255, 255),
) -> Render:
    """Lambertian render of a mesh, one directional light (given in the face frame).

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
    shade = ambient + (1 - ambient) * np.clip(n @ light, 0, None)
    alb = np.asarray(albedo, dtype=np.float64)
    col = (alb[corner] * bary[hit][..., None]).sum(1) if alb.ndim == 2 else alb[None]
    img = np.empty((camera.height, camera.width, 3))
    img[:] = np.asarray(background, dtype=np.float64) / 255.0
    img[hit] = np.clip(col * shade[:, None], 0, 1)
    return Render((img * 255 + 0.5).astype(np.uint8), face_id, bary, depth)


def random_portrait(vertices: np.ndarray, faces: np.ndarray, rng: np.random.Generator,
                    max_yaw: float = 30.0, size: int = 512) -> tuple[Render, Camera]:
    """A synthetic portrait photo of a posed face (V, 3) mm: a perspective camera at yaw
    ±max_yaw°, pitch ±10°, 0.5–0.9 m away, a 260–340 mm field; random skin tone and light.
    Returns the :class:`Render` (image and triangle/barycentric buffers) and its camera."""
    cam = face_camera(yaw_deg=rng.uniform(-max_yaw, max_yaw), pitch_deg=rng.uniform(-10, 10),
                      size=size, distance=rng.uniform(500, 900), fov_mm=rng.uniform(260, 340),
                      center=np.array([0.0, -30.0, 0.0]))
    albedo = np.array([0.8, 0.62, 0.5]) * rng.uniform(0.6, 1.1)
    light = (rng.uniform(-0.5, 0.5), rng.uniform(0.0, 0.6), 1.0)
    return render_mesh(vertices, faces, cam, albedo=albedo, light_dir=light), cam
