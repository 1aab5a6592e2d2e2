"""Normalized rendering (paper §4.4): every face seen by the same camera, light and albedo.

The GAN of the constrained inpainter learns from, and is compared against, these renders, so
they depend on the face's geometry only:

- **camera**: orthographic, frontal (looking down −z of the face frame), fixed once from the
  model's mean face — centred on the face proper, the same pixels per mm for every face
  (:func:`normalized_camera`);
- **light**: one directional light from the front and a little above, plus ambient;
- **albedo**: constant; the image is shaded grey in [0, 1], background 0;
- **z-buffer**: the nearest surface wins (both windings drawn; normals face the camera).

Backends: pytorch3d's rasterizer when it imports (``backend="auto"``; it has no Linux wheel, so
that path is not exercised by this project's tests), else a vectorized numpy z-buffer over the
whole batch at once (the same algorithm as :func:`skullsearch.encoder.render.rasterize`, one
pass for B meshes).

    r = render_normalized(model, vertices)            # vertices (B, V, 3) mm face frame
    r.image, r.coverage, r.masked                     # (B, 1, 128, 128)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from skullsearch.encoder.render import pixel_boxes, vertex_normals_batch

LIGHT_DIR = (0.0, 0.35, 1.0)
AMBIENT = 0.25
ALBEDO = 0.8
#: The face proper spans this share of the image's width or height (the larger).
FILL = 0.8
_DEPTH_MARGIN_MM = 500.0


@dataclass(frozen=True)
class NormalizedCamera:
    """Orthographic camera: pixel u = (x − cx)·ppm + S/2, v = (cy − y)·ppm + S/2 (row 0 at the
    top), depth = z_far − z (mm, positive, smaller is nearer). center (3,) mm; ppm pixels/mm."""

    center: tuple[float, float, float]
    ppm: float
    size: int
    z_far: float

    def project(self, vertices: np.ndarray) -> np.ndarray:
        """(..., V, 3) mm face frame → (..., V, 3) pixel u, v and depth."""
        v = np.asarray(vertices, dtype=np.float64)
        cx, cy, _ = self.center
        u = (v[..., 0] - cx) * self.ppm + self.size / 2.0
        w = (cy - v[..., 1]) * self.ppm + self.size / 2.0
        return np.stack([u, w, self.z_far - v[..., 2]], axis=-1)


@dataclass
class NormalizedRender:
    """image (B, 1, S, S) float32 in [0, 1] (shaded grey, background 0); coverage (B, 1, S, S)
    bool (a triangle is seen); masked (B, 1, S, S) bool (the visible triangle has a vertex in
    ``vertex_mask``; all False without one); face_id (B, S, S) int64 visible triangle (−1:
    background); bary (B, S, S, 3) float32; depth (B, S, S) float32 (inf: background);
    camera: the :class:`NormalizedCamera`; backend: "numpy" or "pytorch3d"."""

    image: np.ndarray
    coverage: np.ndarray
    masked: np.ndarray
    face_id: np.ndarray
    bary: np.ndarray
    depth: np.ndarray
    camera: NormalizedCamera
    backend: str


_CAMERAS: dict = {}


def normalized_camera(model, size: int = 128) -> NormalizedCamera:
    """The canonical camera of a model: centred on the mean face's face proper (x, y bounding box
    of :func:`~skullsearch.encoder.face_model.face_region`), which fills :data:`FILL` of the
    image; cached per model and size."""
    key = (model.topology_hash, hashlib.sha256(np.ascontiguousarray(model.v_template).tobytes()).hexdigest(),
           int(size))
    if key not in _CAMERAS:
        from skullsearch.encoder.face_model import face_region

        v = model.v_template.astype(np.float64)
        face = v[face_region(model)]
        lo, hi = face.min(0), face.max(0)
        center = (lo + hi) / 2
        ppm = FILL * size / max(hi[0] - lo[0], hi[1] - lo[1])
        _CAMERAS[key] = NormalizedCamera(tuple(float(c) for c in center), float(ppm), int(size),
                                         float(v[:, 2].max() + _DEPTH_MARGIN_MM))
    return _CAMERAS[key]


def render_normalized(model, vertices, size: int = 128, vertex_mask=None,
                      backend: str = "auto") -> NormalizedRender:
    """Normalized renders of a batch of faces of ``model``.

    vertices (B, V, 3) (or (V, 3)) mm, face frame, numpy or torch; vertex_mask (B, V) or (V,)
    bool or None; backend "auto" (pytorch3d when importable), "numpy" or "pytorch3d".
    Returns a :class:`NormalizedRender`.
    """
    return render(vertices, model.faces, normalized_camera(model, size), vertex_mask, backend)


def render(vertices, faces: np.ndarray, camera: NormalizedCamera, vertex_mask=None,
           backend: str = "auto") -> NormalizedRender:
    """Render any triangle mesh batch (B, V, 3) mm with ``camera``; see :func:`render_normalized`."""
    v = _numpy(vertices)
    if v.ndim == 2:
        v = v[None]
    if v.ndim != 3 or v.shape[2] != 3:
        raise ValueError(f"vertices must be (B, V, 3), got {v.shape}")
    faces = np.asarray(faces, dtype=np.int64)
    b, n_v, _ = v.shape
    size = camera.size
    screen = camera.project(v)
    use = _pick_backend(backend)
    if use == "pytorch3d":
        face_id, bary, depth = _rasterize_pytorch3d(screen, faces, size)
    else:
        face_id, bary, depth = rasterize_batch(screen, faces, size, size)
    hit = face_id >= 0
    normals = vertex_normals_batch(v, faces)  # (B, V, 3)
    bi = np.broadcast_to(np.arange(b)[:, None, None], face_id.shape)[hit]
    corner = faces[face_id[hit]]  # (n, 3)
    n = (normals[bi[:, None], corner] * bary[hit][..., None]).sum(1)
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    n *= np.where(n[:, 2] < 0, -1.0, 1.0)[:, None]  # face the camera (it looks down −z)
    light = np.asarray(LIGHT_DIR, np.float64)
    light /= np.linalg.norm(light)
    image = np.zeros(face_id.shape, np.float32)
    image[hit] = ALBEDO * (AMBIENT + (1 - AMBIENT) * np.clip(n @ light, 0, None))
    masked = np.zeros(face_id.shape, bool)
    if vertex_mask is not None:
        vm = np.asarray(_numpy(vertex_mask), bool)
        vm = np.broadcast_to(vm, (b, n_v)) if vm.ndim == 1 else vm
        if vm.shape != (b, n_v):
            raise ValueError(f"vertex_mask must be (B, V) = ({b}, {n_v}), got {vm.shape}")
        masked[hit] = vm[bi[:, None], corner].any(1)
    return NormalizedRender(image=image[:, None], coverage=hit[:, None], masked=masked[:, None],
                            face_id=face_id, bary=bary.astype(np.float32),
                            depth=depth.astype(np.float32), camera=camera, backend=use)


def rasterize_batch(screen: np.ndarray, faces: np.ndarray, width: int, height: int):
    """Orthographic z-buffer at pixel centres for a batch of meshes sharing a triangle list.

    screen (B, V, 3): pixel u, v and depth (smaller is nearer); faces (F, 3).
    Returns face_id (B, H, W) int64 (−1 background), bary (B, H, W, 3) float64 (screen-space =
    3D weights under an orthographic camera), depth (B, H, W) (inf background).
    Both windings are drawn; the nearest surface wins (ties: the lower triangle index; depths
    closer than ~1e-10 of the batch's depth range count as ties).
    """
    bsz, n_f = len(screen), len(faces)
    tri = screen[:, faces].reshape(bsz * n_f, 3, 3)  # batch-major
    valid = np.all(np.isfinite(tri), axis=(1, 2))
    tri = np.where(valid[:, None, None], tri, 0.0)
    x0, y0, w, h = pixel_boxes(tri, valid, width, height)
    counts = w * h
    # edge functions, linear in the pixel position: w_k(u, v) = k_k + kx_k·u + ky_k·v per triangle
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    ok = np.abs(area) >= 1e-12
    counts = np.where(ok, counts, 0)
    inv = 1.0 / np.where(ok, area, 1.0)
    k0 = (b[:, 0] * c[:, 1] - b[:, 1] * c[:, 0]) * inv
    kx0, ky0 = (b[:, 1] - c[:, 1]) * inv, (c[:, 0] - b[:, 0]) * inv
    k1 = (c[:, 0] * a[:, 1] - c[:, 1] * a[:, 0]) * inv
    kx1, ky1 = (c[:, 1] - a[:, 1]) * inv, (a[:, 0] - c[:, 0]) * inv
    tid = np.repeat(np.arange(bsz * n_f), counts)
    local = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    wt = w[tid]
    px = x0[tid] + local % wt
    py = y0[tid] + local // wt
    pu, pv = px + 0.5, py + 0.5
    w0 = k0[tid] + kx0[tid] * pu + ky0[tid] * pv
    w1 = k1[tid] + kx1[tid] * pu + ky1[tid] * pv
    w2 = 1.0 - w0 - w1
    eps = -1e-9  # a pixel centre on a shared edge belongs to both triangles (no cracks)
    inside = (w0 >= eps) & (w1 >= eps) & (w2 >= eps)
    bary = np.clip(np.stack([w0[inside], w1[inside], w2[inside]], 1), 0.0, 1.0)
    tid, px, py = tid[inside], px[inside], py[inside]
    depth = (bary * tri[tid, :, 2]).sum(1)
    pix = (tid // n_f) * (height * width) + py * width + px
    # one float64 sort key: pixel index + depth scaled into [0, 0.5) (nearest first per pixel)
    if len(depth):
        lo, span = depth.min(), max(float(np.ptp(depth)), 1e-9)
        order = np.argsort(pix + 0.5 * (depth - lo) / span, kind="stable")
    else:
        order = np.zeros(0, np.int64)
    pix_sorted = pix[order]
    first = order[np.r_[True, pix_sorted[1:] != pix_sorted[:-1]]] if len(order) else order
    n_pix = bsz * height * width
    face_id = np.full(n_pix, -1, np.int64)
    bary_img = np.zeros((n_pix, 3))
    depth_img = np.full(n_pix, np.inf)
    face_id[pix[first]] = tid[first] % n_f
    bary_img[pix[first]] = bary[first]
    depth_img[pix[first]] = depth[first]
    return (face_id.reshape(bsz, height, width), bary_img.reshape(bsz, height, width, 3),
            depth_img.reshape(bsz, height, width))


def pytorch3d_available() -> bool:
    try:
        import pytorch3d.renderer  # noqa: F401
    except Exception:  # ImportError, or a build that fails to load its extension
        return False
    return True


def _pick_backend(backend: str) -> str:
    if backend not in ("auto", "numpy", "pytorch3d"):
        raise ValueError(f"backend must be auto, numpy or pytorch3d, not {backend!r}")
    if backend == "numpy":
        return "numpy"
    if pytorch3d_available():
        return "pytorch3d"
    if backend == "pytorch3d":
        from skullsearch.errors import DependencyError

        raise DependencyError("pytorch3d is not installed (it has no Linux wheel: build it from "
                              "source or use conda); backend='numpy' works everywhere")
    return "numpy"


def _rasterize_pytorch3d(screen: np.ndarray, faces: np.ndarray, size: int):  # pragma: no cover
    """The pytorch3d backend. NOT EXERCISED by this project's tests (pytorch3d has no Linux
    wheel on the registry); same outputs as :func:`rasterize_batch`."""
    import torch
    from pytorch3d.renderer.mesh.rasterize_meshes import rasterize_meshes
    from pytorch3d.structures import Meshes

    s = torch.as_tensor(screen, dtype=torch.float32)
    bsz = len(s)
    # pytorch3d NDC: +x left, +y up; pixel (0, 0) is the top-left corner at (+1, +1)
    ndc = torch.stack([1 - 2 * s[..., 0] / size, 1 - 2 * s[..., 1] / size, s[..., 2]], -1)
    f = torch.as_tensor(faces)
    meshes = Meshes(verts=list(ndc), faces=[f] * bsz)
    p2f, zbuf, bary, _ = rasterize_meshes(meshes, image_size=size, faces_per_pixel=1, blur_radius=0.0,
                                          perspective_correct=False, cull_backfaces=False)
    p2f = p2f[..., 0]
    offs = (torch.arange(bsz) * len(faces))[:, None, None]
    face_id = torch.where(p2f >= 0, p2f - offs, p2f).numpy().astype(np.int64)
    depth = torch.where(p2f >= 0, zbuf[..., 0], torch.full_like(zbuf[..., 0], float("inf")))
    return face_id, bary[..., 0, :].double().numpy(), depth.double().numpy()


def _numpy(x) -> np.ndarray:
    try:
        import torch

        if torch.is_tensor(x):
            return x.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    return np.asarray(x)


def to_png(image: np.ndarray, path) -> None:
    """Write one (1, S, S) or (S, S) render in [0, 1] as an 8-bit grey PNG (Pillow)."""
    from PIL import Image

    a = np.asarray(image, dtype=np.float64).reshape(image.shape[-2:])
    Image.fromarray((np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)).save(path)
