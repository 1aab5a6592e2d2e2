"""dlib's face recognition ResNet, read from its own model file and run in torch.

dlib's ``dlib_face_recognition_resnet_model_v1.dat`` (the person descriptor's network,
:mod:`~skullsearch.encoder.descriptors`) is a 29-convolution ResNet on a 150×150 RGB chip. dlib's
CPU build runs it in about 76 ms a face on this machine; the same weights in torch take about
13 ms (one face, one thread; about 7 ms a face in batches of 16), and give the same 128 numbers
to float rounding (≤ 4·10⁻⁷ on real photos and renders: ``benchmarks/descriptor_speed.py``;
tested against dlib on rendered photos). The chip itself is still cut by dlib
(``dlib.get_face_chips``), so both backends see the same pixels.

The file is dlib's own serialization (``dlib/dnn``): the network's layers from the input up, each
named by a version string (``con_4``, ``affine_``, ``relu_``, ``max_pool_2``, ``avg_pool_2``,
``add_prev_``, ``fc_2``, ``input_rgb_image_sized``) and followed by its settings (dlib's
variable-length integers and floats) and parameters (a tensor: four sizes, then little-endian
float32). :func:`read_network` reads the named layers in order and checks that they form the
network dlib's ``dnn_face_recognition_ex.cpp`` defines::

    input (150×150, mean RGB subtracted, /256) → con 7×7/2 (32) → affine → relu → max_pool 3×3/2
    → 3 × block(32) → block↓(64) + 3 × block(64) → block↓(128) + 2 × block(128)
    → block↓(256) + 2 × block(256) → block↓(256) → mean over the image → fc 256 → 128

where block = con 3×3 → affine → relu → con 3×3 → affine, added to the block's input (block↓:
its first con strides 2, and the input is 2×2-averaged; the sum is zero-extended to the larger
of the two tensors, as dlib's ``add_prev`` does), then relu. A file that does not read as this
network raises :class:`ValueError`; :mod:`~skullsearch.encoder.descriptors` then falls back to
dlib itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: dlib's version strings of the layers this network uses, as serialized (length byte first).
_NAMES = (b"input_rgb_image_sized", b"con_4", b"affine_", b"relu_", b"max_pool_2", b"avg_pool_2",
          b"add_prev_", b"fc_2")
_NAME_RE = re.compile(b"|".join(b"\\x01" + bytes([len(n)]) + re.escape(n) for n in _NAMES))


class _Reader:
    """dlib's serialization primitives over a bytes buffer."""

    def __init__(self, data: bytes, pos: int):
        self.data, self.pos = data, pos

    def int(self) -> int:
        """dlib's packed integer: a byte (bit 7: negative; low 4 bits: the byte count), then the
        magnitude's bytes, least significant first."""
        head = self.data[self.pos]
        size, neg = head & 0x0F, head & 0x80
        if size > 8:
            raise ValueError(f"not a dlib integer at byte {self.pos}")
        v = int.from_bytes(self.data[self.pos + 1:self.pos + 1 + size], "little")
        self.pos += 1 + size
        return -v if neg else v

    def float(self) -> float:
        """dlib's portable float: mantissa and base-2 exponent, two packed integers."""
        mantissa = self.int()
        return float(mantissa) * 2.0 ** self.int()

    def tensor(self) -> np.ndarray:
        """A dlib tensor: version 2, sizes (n, k, nr, nc), then n·k·nr·nc float32 little-endian."""
        if self.int() != 2:
            raise ValueError(f"unexpected tensor version at byte {self.pos}")
        shape = tuple(self.int() for _ in range(4))
        count = int(np.prod(shape))
        end = self.pos + 4 * count
        if count <= 0 or end > len(self.data):
            raise ValueError(f"tensor {shape} at byte {self.pos} runs past the file")
        out = np.frombuffer(self.data, "<f4", count, self.pos).reshape(shape)
        self.pos = end
        return out


@dataclass
class _Layer:
    kind: str
    weight: np.ndarray | None = None     # con (out, in, kh, kw); affine gamma (k,); fc (in, out)
    bias: np.ndarray | None = None       # con (out,); affine beta (k,)
    settings: tuple = field(default_factory=tuple)


def _layers(data: bytes) -> list[_Layer]:
    """The file's named layers, input first."""
    out = []
    for m in _NAME_RE.finditer(data):
        name = m.group()[2:]
        r = _Reader(data, m.end())
        if name == b"input_rgb_image_sized":
            mean = (r.float(), r.float(), r.float())
            out.append(_Layer("input", settings=(mean, r.int(), r.int())))
        elif name == b"con_4":
            params = r.tensor().reshape(-1)
            n, kh, kw, sy, sx, py, px = (r.int() for _ in range(7))
            cin = (params.size - n) // (n * kh * kw)
            if cin * n * kh * kw + n != params.size:
                raise ValueError(f"convolution of {n} {kh}×{kw} filters does not match its "
                                 f"{params.size} parameters")
            w = params[:cin * n * kh * kw].reshape(n, cin, kh, kw)
            out.append(_Layer("con", w, params[cin * n * kh * kw:], (sy, sx, py, px)))
        elif name == b"affine_":
            params = r.tensor().reshape(-1)
            k = params.size // 2
            out.append(_Layer("affine", params[:k], params[k:]))
        elif name == b"relu_":
            out.append(_Layer("relu"))
        elif name in (b"max_pool_2", b"avg_pool_2"):
            out.append(_Layer(name[:3].decode(), settings=tuple(r.int() for _ in range(6))))
        elif name == b"add_prev_":
            out.append(_Layer("add"))
        else:  # fc_2
            n_out, n_in = r.int(), r.int()
            w = r.tensor().reshape(-1)
            if w.size != n_in * n_out:
                raise ValueError(f"fully connected layer {n_in}→{n_out} has {w.size} parameters (a bias?)")
            out.append(_Layer("fc", w.reshape(n_in, n_out)))
    return out


@dataclass
class Network:
    """dlib's face recognition ResNet as arrays (see the module docstring).

    mean: the input's mean (R, G, B) in 0–255; size: the chip's side (150); stem: the 7×7
    convolution and its affine; blocks: (con1, affine1, con2, affine2, down) per residual block;
    fc: (256, 128)."""

    mean: tuple[float, float, float]
    size: int
    stem: tuple[_Layer, _Layer]
    blocks: list[tuple[_Layer, _Layer, _Layer, _Layer, bool]]
    fc: np.ndarray


def read_network(path: str | Path) -> Network:
    """Read dlib's ``dlib_face_recognition_resnet_model_v1.dat``; ValueError if it is not that
    network."""
    try:
        layers = _layers(Path(path).read_bytes())
    except (ValueError, IndexError) as e:
        raise ValueError(f"{path}: not dlib's face recognition ResNet ({e or 'truncated'})") from e
    kinds = "".join({"input": "I", "con": "C", "affine": "A", "relu": "R", "max": "M", "avg": "P",
                     "add": "+", "fc": "F"}[la.kind] for la in layers)
    # stem, then blocks (C A R C A [P] + R), then the mean over the image and the fc layer
    m = re.fullmatch(r"ICARM((?:CARCAP?\+R)+)PF", kinds)
    if m is None:
        raise ValueError(f"{path}: not dlib's face recognition ResNet (layers {kinds!r})")
    stem = (layers[1], layers[2])
    blocks, i = [], 5
    for code in re.findall(r"CARCAP?\+R", m.group(1)):
        down = "P" in code
        if down and layers[i + 5].settings != (2, 2, 2, 2, 0, 0):
            raise ValueError(f"{path}: a block's shortcut is not a 2×2 average")
        blocks.append((layers[i], layers[i + 1], layers[i + 3], layers[i + 4], down))
        i += len(code)
    pool = layers[i]
    if pool.settings[:2] != (0, 0):
        raise ValueError(f"{path}: the last pooling is not over the whole image")
    mean, size, size_x = layers[0].settings
    if size != size_x:
        raise ValueError(f"{path}: input {size}×{size_x} is not square")
    if layers[1].settings[:2] != (2, 2) or layers[4].settings != (3, 3, 2, 2, 0, 0):
        raise ValueError(f"{path}: an unexpected stem")
    return Network(mean, size, stem, blocks, layers[-1].weight)


class TorchResNet:
    """The network in torch (CPU, inference only): :meth:`__call__` maps chips (n, S, S, 3)
    uint8 RGB to descriptors (n, 128) float32."""

    def __init__(self, net: Network):
        import torch

        t = torch.from_numpy
        self.size = net.size
        self.mean = t(np.asarray(net.mean, np.float32)).view(1, 3, 1, 1)

        def con(la):
            return t(la.weight.copy()), t(la.bias.copy()), la.settings

        def aff(la):
            return t(la.weight.copy()).view(1, -1, 1, 1), t(la.bias.copy()).view(1, -1, 1, 1)

        self.stem = (con(net.stem[0]), aff(net.stem[1]))
        self.blocks = [(con(c1), aff(a1), con(c2), aff(a2), down) for c1, a1, c2, a2, down in net.blocks]
        self.fc = t(net.fc.copy())

    @staticmethod
    def _con(x, c):
        import torch.nn.functional as F

        w, b, (sy, sx, py, px) = c
        return F.conv2d(x, w, b, (sy, sx), (py, px))

    @staticmethod
    def _add(a, b):
        """dlib's add_prev: the sum over the larger of the two shapes, each zero outside itself."""
        if a.shape == b.shape:
            return a + b
        shape = [max(p, q) for p, q in zip(a.shape, b.shape, strict=True)]
        out = a.new_zeros(shape)
        out[:, :a.shape[1], :a.shape[2], :a.shape[3]] += a
        out[:, :b.shape[1], :b.shape[2], :b.shape[3]] += b
        return out

    def forward(self, x):
        """x: (n, 3, S, S) float32 in dlib's input scale → (n, 128)."""
        import torch
        import torch.nn.functional as F

        (c, (g, b)) = self.stem
        x = F.max_pool2d(torch.relu(self._con(x, c) * g + b), 3, 2)
        for c1, (g1, b1), c2, (g2, b2), down in self.blocks:
            y = self._con(torch.relu(self._con(x, c1) * g1 + b1), c2) * g2 + b2
            skip = F.avg_pool2d(x, 2, 2) if down else x
            x = torch.relu(self._add(y, skip))
        return x.mean((2, 3)) @ self.fc

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        import torch

        chips = np.asarray(chips)
        if chips.ndim != 4 or chips.shape[1:] != (self.size, self.size, 3):
            raise ValueError(f"chips must be (n, {self.size}, {self.size}, 3), got {chips.shape}")
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(chips)).permute(0, 3, 1, 2).float()
            return self.forward((x - self.mean) / 256.0).numpy().astype(np.float32)
