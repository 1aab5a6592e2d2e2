"""A second real head CT, from Debian: InVesalius' "Cranium" example, as a CThead-style npz.

The shared CThead (``../shared/ct``) is one cadaver. Debian's ``invesalius-examples`` package
(3.1.99998-4, bookworm, main; GPL-2 as the package's copyright file states for all its files,
© CTI Renato Archer / the InVesalius team) ships ``Cranium.inv3``, an InVesalius 3 project of a
head CT ("ProMED CT 0051", 2012): 108 axial slices of 256 × 256, 0.957 × 0.957 mm, 1.5 mm apart,
Hounsfield units. Another person, scanned alive, eyes closed: skin and skull from above the
vertex down to the upper lip — the scan ends above the mouth, so the lower face, the mandible
and the teeth are not in it. It is patient data distributed as sample data; it is not vendored
here (its licence is not the package's, and the face is identifiable): this script makes it
from the Debian package, which any Debian machine can fetch::

    apt-get download invesalius-examples          # invesalius-examples_3.1.99998-4_all.deb
    python benchmarks/ct_cranium.py invesalius-examples_3.1.99998-4_all.deb cranium.npz
    python benchmarks/ct_encoder.py --ct cranium.npz --no-streak --upper-face 3 --detectors dlib --no-prior

The npz follows CThead's conventions (``_ct.load_ct``, ``_ct.head_frame``): ``volume`` int16
(slice, row, column) with slice 0 at the top of the head and low rows at the face, values
HU + 1024 (CThead's skin level 500 and bone level 1250 then mean −524 and 226 HU);
``spacing_mm`` (1.5, 0.957, 0.957). The sha256 of the package's file and of the volume are
checked against the ones below (``--no-check`` skips it for another release).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import plistlib
import sys
import tarfile
from pathlib import Path

import numpy as np

INV3 = "usr/share/doc/invesalius-examples/examples/Cranium.inv3"
SHA256 = {
    "deb": "f2f14bdfef6dc3812eafc5013d133c6c18370aaab5666b78d54af2e7db432f97",
    "inv3": "3b34f11f7c4f557f4c65cd6543c412a2f6ceb0cfecfd9c41184420e02d9b7e2a",
    "matrix": "d87fd5e6aaf2c4fdf4f3fe28ee3335192fc2464ed8e9682fc78530cb837938da",
}


def _ar_members(data: bytes) -> dict[str, bytes]:
    """The members of a Debian package (a Unix ``ar`` archive)."""
    if not data.startswith(b"!<arch>\n"):
        raise SystemExit("not a Debian package (.deb): no ar header")
    out, pos = {}, 8
    while pos + 60 <= len(data):
        head = data[pos:pos + 60]
        name = head[:16].decode().strip().rstrip("/")
        size = int(head[48:58].decode().strip())
        out[name] = data[pos + 60:pos + 60 + size]
        pos += 60 + size + (size % 2)
    return out


def inv3_from_deb(data: bytes) -> bytes:
    members = _ar_members(data)
    name = next((n for n in members if n.startswith("data.tar")), None)
    if name is None:
        raise SystemExit("the package holds no data.tar.*")
    with tarfile.open(fileobj=io.BytesIO(members[name])) as tar:
        for m in tar.getmembers():
            if m.name.lstrip("./") == INV3:
                return tar.extractfile(m).read()
    raise SystemExit(f"the package holds no {INV3}: is it invesalius-examples?")


def volume_from_inv3(data: bytes) -> tuple[np.ndarray, np.ndarray, dict]:
    """(volume (z, y, x) as stored, spacing (x, y, z) mm, the project's main.plist)."""
    try:
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tar:
            files = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            meta = plistlib.loads(tar.extractfile(files["main.plist"]).read())
            raw = tar.extractfile(files[meta["matrix"]["filename"]]).read()
    except (OSError, EOFError, tarfile.TarError, KeyError, plistlib.InvalidFileException) as e:
        raise SystemExit(f"not an InVesalius project (.inv3) nor its Debian package ({e!r}): give "
                         "invesalius-examples_*.deb or its Cranium.inv3") from e
    shape = tuple(meta["matrix"]["shape"])
    vol = np.frombuffer(raw, np.dtype(meta["matrix"]["dtype"]).newbyteorder("<")).reshape(shape)
    return vol, np.asarray(meta["spacing"], np.float64), meta


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", help="invesalius-examples_*.deb (apt-get download invesalius-examples) "
                                  "or its Cranium.inv3")
    p.add_argument("out", help="the npz to write")
    p.add_argument("--no-check", action="store_true", help="do not check the sha256 of the files")
    a = p.parse_args(argv)
    data = Path(a.source).read_bytes()

    def check(kind, blob):
        got = hashlib.sha256(blob).hexdigest()
        if got != SHA256[kind] and not a.no_check:
            raise SystemExit(f"{kind} sha256 {got} is not {SHA256[kind]} (another release? --no-check)")

    if data.startswith(b"!<arch>\n"):
        check("deb", data)
        data = inv3_from_deb(data)
    check("inv3", data)
    vol, spacing, meta = volume_from_inv3(data)
    check("matrix", vol.tobytes())
    if meta.get("modality") != "CT":
        raise SystemExit(f"the project's modality is {meta.get('modality')!r}, not CT")
    # stored (z up from the upper lip, y towards the face, x): CThead's (slice from the top, row
    # from the face, column), values HU + 1024
    out = np.clip(vol[::-1, ::-1, :].astype(np.int32) + 1024, 0, np.iinfo(np.int16).max).astype(np.int16)
    spacing_mm = np.array([spacing[2], spacing[1], spacing[0]])
    np.savez_compressed(a.out, volume=out, spacing_mm=spacing_mm)
    print(f"{a.out}: {meta.get('name')} ({meta.get('modality')}), volume {out.shape} (slice, row, column), "
          f"spacing {spacing_mm.round(4).tolist()} mm, values HU + 1024", file=sys.stderr)


if __name__ == "__main__":
    main()
