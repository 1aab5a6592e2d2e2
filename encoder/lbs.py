"""Linear blend skinning in the standard FLAME / SMPL formulation, batched torch.

shape blend → joint regression → pose blend from (rotation matrices − identity) → kinematic
chain → skinning. Everything is differentiable and runs on the tensors' device.
"""

from __future__ import annotations

import torch


def axis_angle_to_matrix(rotvec: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula.

    rotvec: (..., 3) float axis-angle (radians) → (..., 3, 3) rotation matrices.
    Exact identity for a zero vector; smooth gradients near zero.
    """
    angle2 = (rotvec * rotvec).sum(-1, keepdim=True)  # (..., 1)
    small = angle2 < 1e-12
    safe2 = torch.where(small, torch.ones_like(angle2), angle2)
    angle = safe2.sqrt()
    # sin(a)/a and (1 - cos(a))/a², with Taylor series near zero.
    a = torch.where(small, 1.0 - angle2 / 6.0, torch.sin(angle) / angle)
    b = torch.where(small, 0.5 - angle2 / 24.0, (1.0 - torch.cos(angle)) / safe2)
    x, y, z = rotvec.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(
        *rotvec.shape[:-1], 3, 3
    )
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device).expand_as(k)
    return eye + a[..., None] * k + b[..., None] * (k @ k)


def rigid_transforms(
    rot_mats: torch.Tensor, joints: torch.Tensor, parents: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kinematic chain.

    rot_mats: (B, J, 3, 3) local rotations; joints: (B, J, 3) rest joint positions;
    parents: (J,) int64, parents[0] = -1 and parents[j] < j.
    Returns posed joints (B, J, 3) and the skinning transforms (B, J, 4, 4) that map rest-pose
    points to posed points (world transform with the rest joint position removed).
    """
    bsz, n_joints = joints.shape[:2]
    rel = joints.clone()
    rel[:, 1:] = joints[:, 1:] - joints[:, parents[1:]]
    local = torch.zeros(bsz, n_joints, 4, 4, dtype=joints.dtype, device=joints.device)
    local[..., :3, :3] = rot_mats
    local[..., :3, 3] = rel
    local[..., 3, 3] = 1.0
    chain = [local[:, 0]]
    for j in range(1, n_joints):
        chain.append(chain[int(parents[j])] @ local[:, j])
    world = torch.stack(chain, dim=1)  # (B, J, 4, 4)
    posed_joints = world[..., :3, 3]
    # Remove the rest joint position: A = world · [I, -j_rest].
    offset = (world[..., :3, :3] @ joints[..., None])[..., 0]
    skin = world.clone()
    skin[..., :3, 3] = world[..., :3, 3] - offset
    return posed_joints, skin


def lbs(
    v_shaped: torch.Tensor,
    pose: torch.Tensor,
    j_regressor: torch.Tensor,
    parents: torch.Tensor,
    weights: torch.Tensor,
    posedirs: torch.Tensor | None,
    joints: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pose a batch of shaped meshes.

    v_shaped: (B, V, 3) rest vertices after shape and expression blend shapes;
    pose: (B, 3J) axis-angle per joint; j_regressor: (J, V); parents: (J,);
    weights: (V, J) skinning weights; posedirs: (9(J-1), 3V) pose-corrective blend shapes
    or None for a model without them; joints: (B, J, 3) rest joints when v_shaped is only a
    subset of the mesh (then j_regressor is unused and may be None).
    Returns posed vertices (B, V, 3) and posed joints (B, J, 3).
    """
    bsz, n_vertices = v_shaped.shape[:2]
    if joints is None:
        joints = torch.einsum("jv,bvc->bjc", j_regressor, v_shaped)
    n_joints = joints.shape[1]
    rot_mats = axis_angle_to_matrix(pose.reshape(bsz, n_joints, 3))
    v_posed = v_shaped
    if posedirs is not None:
        eye = torch.eye(3, dtype=pose.dtype, device=pose.device)
        pose_feature = (rot_mats[:, 1:] - eye).reshape(bsz, -1)
        v_posed = v_shaped + (pose_feature @ posedirs).reshape(bsz, n_vertices, 3)
    posed_joints, skin = rigid_transforms(rot_mats, joints, parents)
    # Σ_j w_vj (R_j v + t_j): transform by every joint with large matmuls, then blend
    # (faster on CPU than building a 4×4 matrix per vertex).
    by_joint = torch.einsum("bjmn,bvn->bjvm", skin[..., :3, :3], v_posed) + skin[:, :, None, :3, 3]
    verts = torch.einsum("vj,bjvm->bvm", weights, by_joint)
    return verts, posed_joints
