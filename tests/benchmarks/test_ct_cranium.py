"""benchmarks/ct_cranium.py on a small package the test makes: a Debian .deb (an ``ar`` archive
with data.tar.xz) holding an InVesalius project (a gzipped tar: main.plist + matrix.dat), read
back as a CThead-style npz (offline; the real package is not needed)."""

from __future__ import annotations

import gzip
import io
import plistlib
import tarfile

import numpy as np
import pytest
from benchmark_scripts import load


@pytest.fixture(scope="module")
def cc():
    return load("ct_cranium")


def _tar(files: dict[str, bytes], mode: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _ar(members: dict[str, bytes]) -> bytes:
    out = b"!<arch>\n"
    for name, data in members.items():
        head = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode()
        out += head + data + (b"\n" if len(data) % 2 else b"")
    return out


def _package(vol: np.ndarray, modality: str = "CT") -> bytes:
    meta = {"matrix": {"dtype": "int16", "filename": "matrix.dat", "shape": list(vol.shape)},
            "spacing": [0.9, 0.9, 1.5], "modality": modality, "name": "test head"}
    inv3 = gzip.compress(_tar({"tmpx/main.plist": plistlib.dumps(meta),
                               "tmpx/matrix.dat": vol.astype("<i2").tobytes()}, "w"))
    data = _tar({"./usr/share/doc/invesalius-examples/examples/Cranium.inv3": inv3}, "w:xz")
    return _ar({"debian-binary": b"2.0\n", "control.tar.xz": _tar({}, "w:xz"), "data.tar.xz": data})


def test_the_package_becomes_a_cthead_style_volume(cc, tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.integers(-1024, 3000, size=(5, 6, 7)).astype(np.int16)  # (z up, y to the face, x)
    deb = tmp_path / "invesalius-examples_test_all.deb"
    deb.write_bytes(_package(vol))
    out = tmp_path / "cranium.npz"
    with pytest.raises(SystemExit, match="sha256"):  # not the release the script knows
        cc.main([str(deb), str(out)])
    cc.main([str(deb), str(out), "--no-check"])
    with np.load(out) as d:
        got, spacing = d["volume"], d["spacing_mm"]
    assert got.dtype == np.int16 and got.shape == (5, 6, 7)
    np.testing.assert_array_equal(spacing, [1.5, 0.9, 0.9])  # (slice, row, column)
    # slice 0 = the top, row 0 = the face, values HU + 1024
    np.testing.assert_array_equal(got, vol[::-1, ::-1, :].astype(np.int32) + 1024)
    ct = load("_ct")
    v2, s2 = ct.load_ct(out)  # what ct_encoder / ct_validation read
    np.testing.assert_array_equal(v2, got)


def test_a_wrong_package_or_modality_is_named(cc, tmp_path):
    other = tmp_path / "other.deb"
    other.write_bytes(_ar({"debian-binary": b"2.0\n", "data.tar.xz": _tar({"./usr/x": b"1"}, "w:xz")}))
    with pytest.raises(SystemExit, match="invesalius-examples"):
        cc.main([str(other), str(tmp_path / "o.npz"), "--no-check"])
    notdeb = tmp_path / "x.deb"
    notdeb.write_bytes(b"PK\x03\x04 not a deb")
    with pytest.raises(SystemExit):
        cc.main([str(notdeb), str(tmp_path / "o.npz"), "--no-check"])
    mri = tmp_path / "mri.deb"
    mri.write_bytes(_package(np.zeros((2, 2, 2), np.int16), modality="MR"))
    with pytest.raises(SystemExit, match="not CT"):
        cc.main([str(mri), str(tmp_path / "o.npz"), "--no-check"])
