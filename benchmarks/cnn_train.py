"""The CNN encoder (GFMOFA) trained at scale on renders: make the training set here, train on a GPU.

Two steps, because the real detector (dlib, whose 100 MB landmark model does not travel) runs
here while training wants a GPU:

1. ``data``: persons drawn from the default model's prior (``--seed`` other than the identity
   benchmark's, so that no test person is trained on), each rendered ``--photos`` times as
   ``benchmarks/identity.py`` renders them (yaw ±40°, pitch, distance, light, skin tone, a little
   expression), through the real dlib detector; each found face's 128 px crop (JPEG, quality 92),
   its landmarks (photo px), crop transform, photo size, person id and true shape code go into one
   ``.npz`` (no pickled objects). Chunks of photos in ``--workers`` processes.
2. ``train``: :func:`skullsearch.encoder.cnn.train_encoder` on that file — self-supervised (paper
   Eq. 1 on the detected landmarks; Eq. 2's shape consistency over a person's photos): the true
   shapes are *not* used. Writes the checkpoint and prints one JSON line (faces, epochs, seconds
   per epoch, loss history, device).

    python benchmarks/cnn_train.py data --persons 4000 --photos 3 --seed 11 --out renders.npz
    python benchmarks/cnn_train.py train --data renders.npz --epochs 30 --device cuda --out cnn.pt

The checkpoint is then measured on the identity benchmark's persons:
``python benchmarks/identity.py --cnn cnn.pt`` (the CNN's codes alone, and seeding the fit), on the
CT head (``ct_encoder.py --cnn cnn.pt``), and on real labelled photos (a folder of person
sub-folders; the labels only score)::

    python benchmarks/cnn_train.py photos --photos DIR [--cnn cnn.pt more.pt ...] [--controls N]

which prints the same-vs-different person pair AUC of the CNN's shape codes beside the landmark
fit's, on the same dlib faces, and that of ``--controls`` untrained networks (random weights): a
network's codes also follow a photo's colour and exposure, so on a few photos of a few people even
an untrained one can separate them — the controls say what that check is worth.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from _common import emit, random_faces, render_images

CROP = 128
JPEG_QUALITY = 92


def _chunk(args) -> dict:
    """Render, detect and crop one chunk of photos: (persons' shapes, expressions, poses, person
    ids, seed) → arrays of the found faces."""
    shape, expr, pose, person, seed = args
    from PIL import Image

    from skullsearch import FaceModel
    from skullsearch.encoder.cnn import crop_faces
    from skullsearch.encoder.detectors import get_detector
    from skullsearch.encoder.encode import detect_faces

    torch.set_num_threads(1)
    model = FaceModel.default()
    images = render_images(model, shape, expr, pose, np.random.default_rng(seed), 40.0)
    faces, _ = detect_faces(images, get_detector("dlib"), all_faces=False)
    out = {"jpeg": [], "landmarks": [], "transform": [], "size": [], "person": [], "shape": []}
    if not faces:
        return out
    crops, tr = crop_faces([images[int(f.image)].pixels for f in faces], np.stack([f.box for f in faces]),
                           size=CROP)
    crops = (crops.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for f, c, t in zip(faces, crops, tr.numpy(), strict=True):
        buf = io.BytesIO()
        Image.fromarray(c).save(buf, "JPEG", quality=JPEG_QUALITY)
        i = int(f.image)
        out["jpeg"].append(np.frombuffer(buf.getvalue(), np.uint8))
        out["landmarks"].append(f.landmarks)
        out["transform"].append(t)
        out["size"].append(f.image_size)
        out["person"].append(person[i])
        out["shape"].append(shape[i])
    return out


def make_data(a) -> dict:
    from skullsearch import FaceModel

    model = FaceModel.default()
    rng = np.random.default_rng(a.seed)
    n = a.persons * a.photos
    shape, expr, pose = random_faces(model, n, rng, expr_scale=0.1)
    shape = shape.reshape(a.persons, a.photos, -1)[:, :1].expand(-1, a.photos, -1).reshape(n, -1)
    person = np.repeat(np.arange(a.persons), a.photos)
    step = 64
    jobs = [(shape[s:s + step].numpy(), expr[s:s + step].numpy(), pose[s:s + step].numpy(),
             person[s:s + step], int(rng.integers(2**31))) for s in range(0, n, step)]
    t0 = time.perf_counter()
    parts = []
    with ProcessPoolExecutor(a.workers) if a.workers > 1 else contextlib.nullcontext() as ex:
        for k, part in enumerate((ex.map if ex else map)(_chunk, jobs), 1):
            parts.append(part)
            if k % 10 == 0:
                print(f"{k * step}/{n} photos, {time.perf_counter() - t0:.0f} s", flush=True)
    cat = {k: [x for p in parts for x in p[k]] for k in parts[0]}
    lengths = np.array([len(j) for j in cat["jpeg"]], np.int64)
    np.savez(a.out, jpeg=np.concatenate(cat["jpeg"]), offsets=np.concatenate([[0], np.cumsum(lengths)]),
             landmarks=np.stack(cat["landmarks"]).astype(np.float32),
             transform=np.stack(cat["transform"]).astype(np.float32),
             size=np.stack(cat["size"]).astype(np.float32), person=np.asarray(cat["person"], np.int64),
             shape=np.stack(cat["shape"]).astype(np.float32), seed=a.seed, photos=n)
    result = {"step": "data", "persons": a.persons, "photos": n, "faces": int(len(lengths)),
              "seed": a.seed, "bytes": int(lengths.sum()), "seconds": round(time.perf_counter() - t0, 1)}
    emit(result)
    return result


def load_data(path) -> dict:
    """The training file's arrays, crops decoded to (N, 3, 128, 128) uint8."""
    from PIL import Image

    z = np.load(path)
    jpeg, off = z["jpeg"], z["offsets"]
    crops = np.stack([np.asarray(Image.open(io.BytesIO(jpeg[off[i]:off[i + 1]].tobytes())).convert("RGB"))
                      for i in range(len(off) - 1)])
    return {"images": torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous(),
            **{k: z[k] for k in ("landmarks", "transform", "size", "person", "shape")}}


def train(a) -> dict:
    from skullsearch import FaceModel
    from skullsearch.encoder.cnn import save_checkpoint, train_encoder

    t0 = time.perf_counter()
    d = load_data(a.data)
    n = len(d["images"])
    hold = np.isin(d["person"], np.unique(d["person"])[: a.holdout]) if a.holdout else np.zeros(n, bool)
    tr = ~hold
    t1 = time.perf_counter()
    model = FaceModel.default()
    if a.supervised:
        net, history = train_supervised(d, tr, model, a)
    else:
        net, history = train_encoder(
            d["images"][tr], landmarks_px=d["landmarks"][tr], transforms=d["transform"][tr],
            image_sizes=d["size"][tr], person=None if a.no_person else d["person"][tr], model=model,
            epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, device=a.device, seed=a.seed,
            checkpoint_path=a.out, log=lambda s: print(s, flush=True))
    t2 = time.perf_counter()
    meta = {"faces": int(tr.sum()), "epoch": len(history), "epochs": a.epochs, "seed": a.seed,
            "batch_size": a.batch_size, "lr": a.lr, "data": str(a.data), "history": history}
    save_checkpoint(a.out, net.cpu(), meta=meta)
    out = {"step": "train", "device": str(a.device), "faces": int(tr.sum()), "held_out": int(hold.sum()),
           "epochs": a.epochs, "batch_size": a.batch_size, "lr": a.lr,
           "person_consistency": not (a.no_person or a.supervised), "supervised_weight": a.supervised,
           "loss_first": round(history[0]["loss"], 5), "loss_last": round(history[-1]["loss"], 5),
           "landmark_last": round(history[-1]["landmark"], 5),
           "seconds_per_epoch": round(float(np.median([h["seconds"] for h in history])), 2),
           "seconds": {"load": round(t1 - t0, 1), "train": round(t2 - t1, 1)}}
    if torch.cuda.is_available() and str(a.device).startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name()
    if a.holdout:  # the held-out persons' shape error against the truth (σ units), CNN alone
        from skullsearch.encoder import code as code_layout

        with torch.no_grad():
            imgs = d["images"][hold].float() / 255.0
            tr_h, size_h = torch.as_tensor(d["transform"][hold]), torch.as_tensor(d["size"][hold])
            codes = torch.cat([net.predict_codes(imgs[s:s + 256], tr_h[s:s + 256], size_h[s:s + 256])
                               for s in range(0, len(imgs), 256)]).numpy()
        k = d["shape"].shape[1]
        z = (code_layout.split(codes).shape[:, :k] - d["shape"][hold]) / model.shape_std[:k]
        out["held_out_shape_rms_sigma"] = round(float(np.sqrt((z**2).mean())), 3)
        out["held_out_mean_face_rms_sigma"] = round(
            float(np.sqrt(((d["shape"][hold] / model.shape_std[:k]) ** 2).mean())), 3)
    emit(out)
    return out


def train_supervised(d, tr, model, a):
    """A diagnostic, not the product's training: Eq. 1 plus ``a.supervised`` × Σ ((α − α_true)/σ)²
    on the renders' *true* shape codes — how much identity a render's pixels carry for this network
    when the loss asks for it (synthetic: the truth comes from the same model)."""
    from skullsearch.encoder.cnn import (
        EncoderCNN,
        FaceCropDataset,
        _batches,
        save_checkpoint,
        self_supervised_loss,
    )
    from skullsearch.encoder.fitting import LandmarkRig

    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    data = FaceCropDataset(d["images"][tr], d["landmarks"][tr], d["transform"][tr], d["size"][tr])
    truth = torch.as_tensor(d["shape"][tr])
    net = EncoderCNN.for_model(model).to(a.device)
    rig = LandmarkRig(model, net.n_shape, net.n_expression, device=a.device)
    opt = torch.optim.Adam(net.parameters(), lr=a.lr)
    std = net.shape_std
    history = []
    for epoch in range(1, a.epochs + 1):
        net.train()
        t0, tot, sup = time.perf_counter(), 0.0, 0.0
        for idx in _batches(len(data), a.batch_size, None, gen):
            b = {k: torch.stack([data[i][k] for i in idx]) for k in data[0]}
            codes = net.predict_codes(b["image"].to(a.device).float() / 255.0, b["transform"],
                                      b["image_size"], b["focal"])
            terms = self_supervised_loss(rig, codes, b["landmarks_px"], b["image_size"], b["focal"],
                                         edges=(b["edges"], b["edge_mask"]))
            k = truth.shape[1]
            err = (((codes[:, :k] - truth[idx].to(a.device)) / std[:k]) ** 2).sum(1)
            loss = terms.total + a.supervised * err
            opt.zero_grad()
            loss.mean().backward()
            opt.step()
            tot += float(terms.total.detach().sum())
            sup += float(err.detach().sum())
        history.append({"epoch": epoch, "loss": tot / len(data), "landmark": tot / len(data),
                        "supervised_sigma2": sup / len(data), "seconds": time.perf_counter() - t0})
        save_checkpoint(a.out, net, {"epoch": epoch, "epochs": a.epochs, "history": history})
        print(f"epoch {epoch}/{a.epochs}: Eq. 1 {tot / len(data):.5f}, shape error "
              f"{sup / len(data):.2f} sigma^2, {history[-1]['seconds']:.1f} s", flush=True)
    net.eval()
    return net, history


def photos(a) -> dict:
    """Real photos: each checkpoint's shape codes on dlib's boxes against the landmark fit's, by
    the same-vs-different person pair AUC (shape codes in prior σ units, L2)."""
    from photometric_settings import fitted, pair_auc, real_copies, same_person

    from skullsearch import FaceModel
    from skullsearch.encoder import code as code_layout
    from skullsearch.encoder.cnn import EncoderCNN, encode_detected, load_checkpoint
    from skullsearch.encoder.encode import image_paths

    model = FaceModel.default()
    paths = image_paths([a.photos])
    faces, pixels = fitted(model, paths)
    who = np.array([Path(f.image).parent.name for f in faces])
    copies = real_copies(faces, pixels)  # two files of one picture: not two photos of a person
    _, same = same_person(who, copies)
    std = np.asarray(model.shape_std[: code_layout.N_SHAPE])

    def code_auc(codes):  # shape codes in prior σ units
        return pair_auc(code_layout.split(codes).shape[:, : code_layout.N_SHAPE] / std, who, copies)

    def cnn_codes(net):
        return encode_detected(net, faces, pixels)

    out = {"step": "photos", "photos": len(paths), "faces": len(faces), "persons": len(set(who)),
           "same_pairs": int(same.sum()), "different_pairs": int((~same).sum()),
           "copy_pairs_left_out": int(np.triu(copies, 1).sum()),
           "landmark_fit_pair_auc": code_auc(np.stack([f.code for f in faces])), "cnn": {}}
    for ckpt in a.cnn:
        net = load_checkpoint(ckpt, model=model)[0]
        out["cnn"][Path(ckpt).name] = {"pair_auc": code_auc(cnn_codes(net))}
    # the control: untrained networks (random weights) read the photos' colours and exposure too
    controls = []
    for seed in range(a.controls):
        torch.manual_seed(seed)
        controls.append(code_auc(cnn_codes(EncoderCNN.for_model(model).eval())))
    out["untrained_pair_auc"] = controls
    emit(out)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="step", required=True)
    d = sub.add_parser("data", help="render, detect and crop the training faces (CPU)")
    d.add_argument("--persons", type=int, default=1000)
    d.add_argument("--photos", type=int, default=3)
    d.add_argument("--seed", type=int, default=11, help="not identity.py's (0): no test person is trained on")
    d.add_argument("--workers", type=int, default=2)
    d.add_argument("--out", required=True)
    t = sub.add_parser("train", help="train the CNN encoder on a data file (GPU: --device cuda)")
    t.add_argument("--data", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--device", default="cpu")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--holdout", type=int, default=0, help="persons held out of training and measured")
    t.add_argument("--no-person", action="store_true", help="Eq. 1 only (no shape consistency)")
    t.add_argument("--supervised", type=float, default=0.0,
                   help="a diagnostic: add this weight × the shape-code error against the renders' truth")
    r = sub.add_parser("photos", help="real labelled photos: the CNN's shape-code pair AUC")
    r.add_argument("--photos", type=Path, required=True, help="a folder of person sub-folders")
    r.add_argument("--cnn", nargs="*", default=[], metavar="CKPT",
                   help="trained checkpoints (none: the untrained controls alone)")
    r.add_argument("--controls", type=int, default=5,
                   help="untrained networks (seeds 0..N-1) measured the same way: what chance looks like")
    a = ap.parse_args(argv)
    return {"data": make_data, "train": train, "photos": photos}[a.step](a)


if __name__ == "__main__":
    main()
