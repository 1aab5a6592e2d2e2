"""The fit's fast paths give the same numbers as the general code they replace."""

import numpy as np
import torch

from skullsearch.encoder.fitting import JAW, Adam, LandmarkRig, largest_component


def test_adam_matches_torch_optim_with_cosine_schedule():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(6, 5, generator=g)
    start = torch.randn(6, 5, generator=g)

    def loss(x):
        return ((x - target) ** 4).sum() + (x**2).sum()

    ours, ref = start.clone().requires_grad_(True), start.clone().requires_grad_(True)
    opt = Adam([ours], lr=0.05, cosine_steps=30, eta_min=0.0025)
    topt = torch.optim.Adam([ref], lr=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(topt, 30, eta_min=0.0025)
    for _ in range(30):
        for o, x in ((opt, ours), (topt, ref)):
            o.zero_grad()
            loss(x).backward()
            o.step()
        sched.step()
        assert abs(opt.lr - topt.param_groups[0]["lr"]) < 1e-12
    assert torch.allclose(ours, ref, atol=1e-6)
    assert not torch.allclose(ours, start)  # it moved


def _jaw_case(rig, model, seed):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(5, rig.n_shape, generator=g) * torch.as_tensor(model.shape_std[: rig.n_shape],
                                                                    dtype=torch.float32)
    e = torch.rand(5, rig.n_expression, generator=g) * 0.3
    jaw = torch.randn(5, 3, generator=g) * 0.15
    pose = torch.zeros(5, 3 * rig.n_joints)
    pose[:, 3 * JAW: 3 * JAW + 3] = jaw
    return s, e, jaw, pose


def test_points_jaw_equals_general_skinning(default_model):
    rig = LandmarkRig(default_model, 90, 90)
    s, e, jaw, pose = _jaw_case(rig, default_model, 0)
    for a, b in zip(rig.points(s, e, pose), rig.points_jaw(s, e, jaw), strict=True):
        assert torch.allclose(a, b, atol=1e-3)  # mm, float32 rounding
    # with pose-corrective blend shapes (FLAME files have them; the open model does not)
    g = torch.Generator().manual_seed(1)
    rig.posedirs = torch.randn(9 * (rig.n_joints - 1), 3 * len(rig.v0), generator=g)
    rig.jaw_posedirs = rig.posedirs[9 * (JAW - 1): 9 * JAW].contiguous()
    a, b = rig.points(s, e, pose), rig.points_jaw(s, e, jaw)
    assert torch.allclose(a[0], b[0], atol=1e-3) and torch.allclose(a[1], b[1], atol=1e-3)
    # and the jaw does move the points (the test is not comparing two rest poses)
    rest = rig.points_jaw(s, e, jaw * 0)[0]
    assert (rest - b[0]).abs().max() > 1.0


def test_largest_component_is_trimesh_face_adjacency(default_model):
    import trimesh

    faces = default_model.faces
    mesh = trimesh.Trimesh(default_model.v_template, faces, process=False)
    parts = trimesh.graph.connected_components(mesh.face_adjacency, nodes=np.arange(len(faces)))
    want = np.sort(max(parts, key=len))
    got = largest_component(faces)
    assert np.array_equal(got, want) and 0 < len(got) < len(faces)
    # two disjoint strips: the larger one wins; a vertex-only contact does not join them
    strip = np.array([[0, 1, 2], [1, 3, 2], [2, 3, 4]])
    other = np.array([[4, 5, 6], [7, 8, 9], [8, 10, 9], [9, 10, 11], [10, 12, 11]])
    assert np.array_equal(largest_component(np.concatenate([strip, other])), [4, 5, 6, 7])
