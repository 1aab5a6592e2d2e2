"""Photo fingerprints: a small descriptor of each aligned face crop, for near-duplicate photos.

A *near-duplicate photo* is another file of the same picture: re-saved as JPEG, resized,
slightly cropped, brightened, metadata stripped, converted PNG → JPEG. Their identity codes are
no closer than two photos of different faces (the landmark-only fit's identity noise is about
the spread between faces, see ``benchmarks/near_duplicates.py``), so copies are found by their
pixels instead, the way dedup pipelines do it (perceptual hashes, image embeddings):

1. **Align.** Three points from the 68 landmarks (the centres of the eyes and of the nose, each
   a mean of 6–9 landmarks) fix a similarity transform to a canonical frame (ArcFace's 112-px
   layout, ``MARGIN`` times wider): a resize, crop or shift of the photo moves the landmarks with
   the face, so the canonical crop stays the same.
2. **Crop.** The face is resampled to ``SIZE`` × ``SIZE`` grayscale, anti-aliased (box-reduced by
   an integer factor, then bilinearly supersampled ``SUPERSAMPLE``-fold and averaged), the edge
   pixels repeated where the frame leaves the photo.
3. **Describe.** pHash's transform: the 2D DCT-II of the crop and its ``SIDE`` × ``SIDE`` lowest
   frequencies; the DC term is dropped and the other ``DIM`` = 63 coefficients are scaled to unit
   length. A global brightness or contrast change scales every AC coefficient alike (the
   descriptor does not move); re-encoding and resizing change the high frequencies it leaves out.
   pHash keeps one bit per coefficient (above or below their median); the float vector is kept
   here because it separates copies from different faces far better (``benchmarks/
   near_duplicates.py``, 24 rendered faces × 13 kinds of copies, real dlib, seeds 0 / 1: with no
   false flag it flags 95.8 % / 80.4 % of the copies; pHash bits of the same crops 48 % / 47 %).

Distances are L2 between unit vectors (0–2; 2 − 2·cos); :func:`flat_index` is the exact FAISS
index searched at ingest. The catalog stores the fingerprints as float16 (123 bytes per face on
disk). Cost: about 0.6–1.1 ms per face on one core (2000-px faces too: large faces are strided
and box-reduced first); the detector workers compute it, next to a dlib detection of tens of
ms on a 400-px photo.
"""

from __future__ import annotations

import numpy as np

#: Side of the canonical grayscale face crop (pixels).
SIZE = 32
#: Side of the low-frequency DCT block kept (SIDE² − 1 = 63 numbers, the DC term left out).
SIDE = 8
#: Bilinear samples per crop pixel and axis (anti-aliasing).
SUPERSAMPLE = 4
#: Where the alignment points go, in ArcFace's 112 × 112 crop: its eye centres (image left to
#: right) and, for the centre of the nose landmarks, its nose tip (renders of the open model
#: put that centre at (56.4, 71.9) ± 3 px once the eyes are aligned).
TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366]])
#: How much wider than ArcFace's tight crop the canonical frame is (1 = the same frame): a
#: little context (forehead, chin, the head's outline) separates different faces slightly better.
MARGIN = 1.2
#: Length of a fingerprint.
DIM = SIDE * SIDE - 1


def align_points(landmarks: np.ndarray) -> np.ndarray:
    """(…, 68, 2) iBUG landmarks → the three alignment points (…, 3, 2): the centres of the
    eyes (36–41 and 42–47) and of the nose (27–35), each a mean of several landmarks (the
    mouth and jaw points move most between two detections of one photo)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    return np.stack([lm[..., 36:42, :].mean(-2), lm[..., 42:48, :].mean(-2),
                     lm[..., 27:36, :].mean(-2)], -2)


def canonical_points(size: int = SIZE, margin: float = MARGIN) -> np.ndarray:
    """The template's alignment points (3, 2) in a size × size crop (pixel centres at 0.5 …)."""
    return (TEMPLATE_112 - 56.0) / (112.0 * margin) * size + size / 2.0


def similarity_2d(src: np.ndarray, dst: np.ndarray) -> tuple[complex, complex]:
    """Least-squares similarity z ↦ a·z + b mapping points src (n, 2) onto dst (n, 2), as complex
    numbers (a: scale and rotation, b: translation)."""
    s = src[:, 0] + 1j * src[:, 1]
    d = dst[:, 0] + 1j * dst[:, 1]
    sc, dc = s - s.mean(), d - d.mean()
    a = (np.conj(sc) @ dc) / max(float((np.abs(sc) ** 2).sum()), 1e-12)
    return complex(a), complex(d.mean() - a * s.mean())


def face_crop(pixels: np.ndarray, landmarks: np.ndarray, size: int = SIZE,
              margin: float = MARGIN, supersample: int = SUPERSAMPLE) -> np.ndarray:
    """The aligned grayscale face crop (size, size) float32 in [0, 255] of one face.

    pixels: (H, W, 3) or (H, W) uint8; landmarks: (68, 2) pixels (x right, y down, pixel
    centres at integers). Where the canonical frame leaves the photo, its edge pixels are
    repeated.
    """
    from PIL import Image

    h, w = pixels.shape[:2]
    a, b = similarity_2d(canonical_points(size, margin), align_points(landmarks))  # crop → photo
    scale = abs(a)  # photo pixels per crop pixel
    if not (np.isfinite(scale) and scale > 1e-6 and np.isfinite(b)):
        raise ValueError("degenerate landmarks: the face has no extent")
    corners = a * np.array([0, size, size * 1j, size + size * 1j]) + b
    lo_x, hi_x = int(np.floor(corners.real.min())) - 2, int(np.ceil(corners.real.max())) + 2
    lo_y, hi_y = int(np.floor(corners.imag.min())) - 2, int(np.ceil(corners.imag.max())) + 2
    x0, x1 = min(max(lo_x, 0), w - 1), max(min(hi_x, w), 1)
    y0, y1 = min(max(lo_y, 0), h - 1), max(min(hi_y, h), 1)
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    # anti-aliasing: a crop pixel should span supersample / 2 to supersample pixels of the
    # image it is sampled from (bilinear samples at most one pixel apart then miss none):
    # box-reduce by kk, after keeping every j-th pixel of a large face (k = j · kk; the
    # stride bounds the cost, ~1 ms at any photo size, and the reduce still averages kk² pixels)
    k = max(1, int(2 * scale / supersample))
    j = max(1, k // 4)
    kk = max(1, k // j)
    k = j * kk
    region = Image.fromarray(np.ascontiguousarray(pixels[y0:y1:j, x0:x1:j]))
    if kk > 1:
        region = region.reduce(kk)
    gray = region.convert("L")
    # where the frame leaves the photo: repeat the edge (padding in reduced pixels)
    pad = [max(0, -(-(x0 - lo_x) // k)), max(0, -(-(y0 - lo_y) // k)),
           max(0, -(-(hi_x - x1) // k)), max(0, -(-(hi_y - y1) // k))]
    if any(pad):
        g = np.pad(np.asarray(gray), ((pad[1], pad[3]), (pad[0], pad[2])), mode="edge")
        gray = Image.fromarray(g)
    # output pixel centre (X, Y) of the supersampled crop → canonical (X, Y) / ss → photo
    # z = a·(X, Y) / ss + b (pixel centres at integers) → reduced pixel (z − offset − j(kk − 1) / 2) / k
    # (its centre: the mean of the kk strided pixels it averages), where PIL puts centres at + 0.5
    m = a / (supersample * k)
    c = ((b - complex(x0, y0) - j * (kk - 1) / 2 * (1 + 1j)) / k + complex(pad[0], pad[1])
         + (0.5 + 0.5j))
    data = (m.real, -m.imag, c.real, m.imag, m.real, c.imag)
    big = gray.transform((size * supersample,) * 2, Image.Transform.AFFINE, data,
                         resample=Image.Resampling.BILINEAR)
    out = np.asarray(big, dtype=np.float32).reshape(size, supersample, size, supersample)
    return out.mean((1, 3))


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


_DCT: dict[int, np.ndarray] = {}


def describe(crops: np.ndarray, side: int = SIDE) -> np.ndarray:
    """Fingerprints (n, side² − 1) float32, unit length, of grayscale crops (n, S, S): the DCT-II's
    side × side lowest frequencies without the DC term. A flat crop (no AC energy) gives NaN."""
    crops = np.asarray(crops, dtype=np.float64)
    s = crops.shape[-1]
    if s not in _DCT:
        _DCT[s] = _dct_matrix(s)
    d = _DCT[s][:side]
    low = (d @ crops @ d.T).reshape(len(crops), -1)[:, 1:]
    norm = np.linalg.norm(low, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(norm > 1e-9, low / norm, np.nan)
    return out.astype(np.float32)


def photo_fingerprints(pixels: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Fingerprints (n, DIM) float32 of the n faces of one photo; a row of NaN where a face's
    landmarks are degenerate or its crop is flat.

    pixels: (H, W, 3) or (H, W) uint8; landmarks: (n, 68, 2) pixels.
    """
    lm = np.asarray(landmarks, dtype=np.float64).reshape(-1, 68, 2)
    out = np.full((len(lm), DIM), np.nan, np.float32)
    crops, ok = [], []
    for i, x in enumerate(lm):
        try:
            crops.append(face_crop(pixels, x))
            ok.append(i)
        except ValueError:
            continue
    if ok:
        out[ok] = describe(np.stack(crops))
    return out


def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """L2 distances between fingerprints a (n, DIM) and b (n, DIM), row by row → (n,)."""
    return np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64), axis=-1).astype(np.float32)


def flat_index(vectors: np.ndarray | None = None):
    """An exact FAISS ``IndexFlatL2`` over fingerprints (n, DIM) (positions = row numbers;
    its distances are squared L2)."""
    import faiss

    idx = faiss.IndexFlatL2(DIM)
    if vectors is not None and len(vectors):
        idx.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return idx
