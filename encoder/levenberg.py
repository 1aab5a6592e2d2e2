"""Levenberg–Marquardt for the landmark fit: the fit's objective as a batched least-squares
problem with analytic Jacobians (the solver behind :func:`~skullsearch.encoder.fitting.fit_landmarks`).

The energy of :mod:`skullsearch.encoder.fitting` is a sum of squares per face:

    r_lmk  = √(w_lmk / 68) · (π(L_k) − l_k) / s                      (136 rows)
    r_edge = √(w_edge / |Del|) · (‖l_i − l_j‖ − ‖π(L_i) − π(L_j)‖) / s   (one row per edge)
    prior  = √w_shape · α/σ_α, √w_expr · δ/σ_δ, √w_pose · θ_jaw

over the parameters x = [camera rotation (3, axis-angle), translation (3, mm), jaw (3,
axis-angle), δ (E), α (S)] (each photo's own parameters before its person's shared α).
With the jaw-only skinning of :meth:`LandmarkRig.points_jaw` each landmark is
L = A(c) + R_jaw U(c) + W p(c): A and U affine in the coefficients c = [δ, α], p the jaw joint,
W the point's jaw weight, so dL/dc is exact and cheap, and rotations enter through the right
Jacobian of SO(3) (R(θ + dθ) ≈ R(θ) exp([J_r(θ) dθ]×)). The residuals' 136 × 136 metric
(:func:`edge_metric`) folds the edge rows into the landmarks' Jacobian: H = J_uvᵀ M J_uv.

Faces of one person share α (paper Eq. 2): the normal equations are solved by eliminating each
photo's own parameters (Schur complement), which gives the joint step of all of a person's photos
at the cost of per-photo solves. The damping λ·diag(H) (Marquardt) is per person: a step that
lowers the person's energy is taken and λ shrinks, else λ grows and the step is retried next
iteration (the driver, with the silhouette choice of the jaw-line landmarks, is
``fitting._LMProblem.run``). Everything runs on the whole batch at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from skullsearch.encoder.lbs import axis_angle_to_matrix

#: Jacobian columns before the coefficients: camera rotation (3), translation (3), jaw (3).
N_RIGID = 9


def skew(v: torch.Tensor) -> torch.Tensor:
    """(..., 3) → (..., 3, 3) cross-product matrices [v]×."""
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], -1).reshape(*v.shape, 3)


def right_jacobian(rotvec: torch.Tensor) -> torch.Tensor:
    """(..., 3) axis-angle → (..., 3, 3) right Jacobian of SO(3): R(θ + dθ) ≈ R(θ) exp([J_r dθ]×)."""
    a2 = (rotvec * rotvec).sum(-1, keepdim=True)[..., None]  # (..., 1, 1)
    small = a2 < 1e-8
    safe = torch.where(small, torch.ones_like(a2), a2)
    a = safe.sqrt()
    c1 = torch.where(small, 0.5 - a2 / 24.0, (1.0 - torch.cos(a)) / safe)
    c2 = torch.where(small, 1.0 / 6.0 - a2 / 120.0, (a - torch.sin(a)) / (safe * a))
    k = skew(rotvec)
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device)
    return eye - c1 * k + c2 * (k @ k)


@dataclass
class PointTables:
    """The landmark-relevant points of a :class:`LandmarkRig` in the form L = A + R_jaw U + W p.

    Q = K landmarks (68, 68 per yaw bin of a pose-conditioned rig, or a dense detector's K;
    ``n_static`` = K) followed by the 14 × C silhouette candidates (row-major; none for a rig
    without them). base0, base1
    (Q, 3) mm; d0, d1 (Q, 3, P) their derivatives by the coefficients c = [δ, α] (expression
    first; P = E + S); w (Q,); pivot0 (3,), pivot_d (3, P) the jaw joint; pd0, pd1 (Q, 3, 9) or
    None: the pose-corrective blend shapes by vec(R_jaw − I). A landmark blends its triangle's
    corners with their own jaw weights: A = Σ b(1 − w)v, U = Σ b·w·(v − p), W = Σ b·w (base0,
    base1 and d0, d1 are those sums for the rest vertices and the bases).
    """

    base0: torch.Tensor
    base1: torch.Tensor
    d0: torch.Tensor
    d1: torch.Tensor
    w: torch.Tensor
    pivot0: torch.Tensor
    pivot_d: torch.Tensor
    pd0: torch.Tensor | None
    pd1: torch.Tensor | None
    n_cand: int
    n_static: int = 68

    def __post_init__(self):
        # (P, 3Q) and (9, 3Q) matrices for the batched forward pass
        p = self.d0.shape[-1]
        self._d0m = self.d0.permute(2, 0, 1).reshape(p, -1).contiguous()
        self._d1m = self.d1.permute(2, 0, 1).reshape(p, -1).contiguous()
        self._pd0m = None if self.pd0 is None else self.pd0.permute(2, 0, 1).reshape(9, -1).contiguous()
        self._pd1m = None if self.pd1 is None else self.pd1.permute(2, 0, 1).reshape(9, -1).contiguous()

    @classmethod
    def of(cls, rig) -> PointTables:
        cached = getattr(rig, "_point_tables", None)
        if cached is not None:
            return cached
        n, p = len(rig.v0), rig.dirs_t.shape[0]
        # coefficient order [δ, α]: a photo's own parameters before its person's shared ones
        dev = rig.v0.device
        perm = torch.cat([torch.arange(rig.n_shape, p, device=dev), torch.arange(rig.n_shape, device=dev)])
        dirs = rig.dirs_t[perm].T.reshape(n, 3, p)
        w = rig.w_jaw if rig.w_jaw is not None else torch.zeros_like(rig.v0[:, 0])
        pd = None
        if getattr(rig, "jaw_posedirs", None) is not None:
            pd = rig.jaw_posedirs.T.reshape(n, 3, 9)
        lm, bary = torch.as_tensor(rig.lm_local, device=dev), rig.bary  # (K, 3) corners
        cand = torch.as_tensor(rig.cand_local, device=dev).reshape(-1)  # (14 C,) or none
        k = len(lm)

        def blend(x, weights):  # x (n, ...) → landmarks (K, ...) and candidates (14 C, ...)
            ones = [1] * (x.dim() - 1)
            wl = (bary * weights[lm]).reshape(k, 3, *ones)
            return torch.cat([(x[lm] * wl).sum(1), x[cand] * weights[cand].reshape(-1, *ones)])

        one = torch.ones_like(w)
        tables = cls(
            base0=blend(rig.v0, one - w), base1=blend(rig.v0, w),
            d0=blend(dirs, one - w).contiguous(), d1=blend(dirs, w).contiguous(),
            w=blend(one[:, None], w)[:, 0],
            pivot0=rig.jaw0 if rig.w_jaw is not None else torch.zeros_like(rig.v0[0]),
            pivot_d=(rig.jaw_dirs_t[perm].T.contiguous() if rig.w_jaw is not None
                     else torch.zeros(3, p, dtype=rig.v0.dtype, device=rig.v0.device)),
            pd0=None if pd is None else blend(pd, one - w).contiguous(),
            pd1=None if pd is None else blend(pd, w).contiguous(),
            n_cand=rig.cand_local.shape[1], n_static=k,
        )
        rig._point_tables = tables  # built once per rig (like rig_for's cache per model)
        return tables

    def forward(self, c: torch.Tensor, jaw: torch.Tensor):
        """c (B, P), jaw (B, 3) → posed points (B, Q, 3) mm and the parts (A, U, R_jaw, p) that the
        Jacobian needs: A, U (B, Q, 3), R_jaw (B, 3, 3), p (B, 3)."""
        b, q = c.shape[0], self.base0.shape[0]
        rot = axis_angle_to_matrix(jaw)
        piv = self.pivot0 + c @ self.pivot_d.T  # (B, 3)
        a = self.base0 + (c @ self._d0m).reshape(b, q, 3)
        u = self.base1 + (c @ self._d1m).reshape(b, q, 3) - self.w[None, :, None] * piv[:, None]
        if self._pd0m is not None:
            eye = torch.eye(3, dtype=c.dtype, device=c.device)
            rm = (rot - eye).reshape(b, 9)
            a = a + (rm @ self._pd0m).reshape(b, q, 3)
            u = u + (rm @ self._pd1m).reshape(b, q, 3)
        pts = a + u @ rot.transpose(1, 2) + self.w[None, :, None] * piv[:, None]
        return pts, (a, u, rot, piv)


def effective_rows(tables: PointTables, pick: torch.Tensor, marching,
                   bins: torch.Tensor | None = None) -> torch.Tensor:
    """Rows (B, 68) into the Q points of each face's 68 landmarks: the static ones (of each
    face's yaw bin, bins (B,) int, in a pose-conditioned rig; None: the first 68), and for the
    jaw line the chosen silhouette candidates pick (B, 14)."""
    b = pick.shape[0]
    rows = torch.arange(68, device=pick.device).expand(b, 68).clone()
    if bins is not None:
        rows = rows + 68 * bins.to(rows)[:, None]
    if not len(marching):  # a contour fixed on the surface: every landmark is static
        return rows
    m = torch.arange(len(marching), device=pick.device)
    rows[:, list(marching)] = tables.n_static + m[None] * tables.n_cand + pick
    return rows


def landmark_jacobian(tables: PointTables, c, jaw, parts, rows):
    """d(posed landmark)/d[jaw, c] (B, 68, 3, 3 + P) at the current estimate; rows (B, 68) from
    :func:`effective_rows`. (The fit uses :func:`landmark_uv_jacobian`, the same chained with
    the projection; this one is the reference the tests check both against.)"""
    _, u, rot, _ = parts
    b = c.shape[0]
    bi = torch.arange(b, device=c.device)[:, None]
    w = tables.w[rows][..., None, None]  # (B, 68, 1, 1)
    d0, d1 = tables.d0[rows], tables.d1[rows]  # (B, 68, 3, P)
    pdir = tables.pivot_d[None, None]  # (1, 1, 3, P)
    jc = d0 + rot[:, None] @ (d1 - w * pdir) + w * pdir
    return torch.cat([_jaw_jacobian(tables, jaw, u[bi, rows], rot, rows, None), jc], -1)


def _jaw_jacobian(tables, jaw, ue, rot, rows, m):
    """d(landmark)/dθ_jaw (B, 68, 3, 3), or chained with m (B, 68, 2, 3): (B, 68, 2, 3)."""
    b = jaw.shape[0]
    jr = right_jacobian(jaw)  # (B, 3, 3)
    rm = rot[:, None] if m is None else m @ rot[:, None]  # (B, 68, ·, 3)
    jj = -rm @ skew(ue) @ jr[:, None]
    if tables.pd0 is not None:
        # vec(dR/dθ_i) = vec(R [J_r e_i]×) for i = 0, 1, 2 → (B, 9, 3)
        dr = (rot[:, None] @ skew(jr.transpose(1, 2))).reshape(b, 3, 9).transpose(1, 2)
        a = tables.pd0[rows] @ dr[:, None]  # (B, 68, 3, 3)
        jj = jj + (a if m is None else m @ a) + rm @ (tables.pd1[rows] @ dr[:, None])
    return jj


def landmark_uv_jacobian(tables: PointTables, jaw, parts, rows, m, marching):
    """d(projected landmark)/d[jaw, c] (B, K, 2, 3 + P): :func:`landmark_jacobian` chained with
    the projection's m (B, K, 2, 3) from :func:`projection_jacobian`, without gathering the
    static landmarks' derivative tables per face (m·dL = m·d0 + (m R)·d1 + w (m − m R)·dp).
    rows (B, K): :func:`effective_rows` (K = 68), or every face's 0 … K − 1 (a dense rig)."""
    _, u, rot, _ = parts
    b, p, n = jaw.shape[0], tables.d0.shape[-1], rows.shape[1]
    bi = torch.arange(b, device=jaw.device)[:, None]
    mr = m @ rot[:, None]  # (B, K, 2, 3)
    march = list(marching)
    static = [k for k in range(n) if k not in set(march)] if march else slice(None, n)

    def shared(mm, d):  # mm (B, K, 2, 3), d (K, 3, P) the same for every face → (B, K, 2, P)
        k = d.shape[0]
        return (mm.transpose(0, 1).reshape(k, 2 * b, 3) @ d).reshape(k, b, 2, p).transpose(0, 1)

    out = torch.empty(b, n, 2, p, dtype=m.dtype, device=m.device)
    out[:, static] = shared(m[:, static], tables.d0[static]) + shared(mr[:, static], tables.d1[static])
    if march:
        mrows = rows[:, march]  # (B, 14) candidate rows
        out[:, march] = m[:, march] @ tables.d0[mrows] + mr[:, march] @ tables.d1[mrows]
    w = tables.w[rows][..., None, None]
    out += ((w * (m - mr)).reshape(-1, 3) @ tables.pivot_d).reshape(b, n, 2, p)
    return torch.cat([_jaw_jacobian(tables, jaw, u[bi, rows], rot, rows, m), out], -1)


def projection_jacobian(pts, cam_rot_mat, cam_rotvec, trans, focal):
    """Camera part: points (B, K, 3) face frame → (uv-Jacobian factor M (B, K, 2, 3) with
    duv = M · dL for a moving point, and duv/d[rotvec, trans] (B, K, 2, 6))."""
    pc = pts @ cam_rot_mat.transpose(1, 2) + trans[:, None]
    z = pc[..., 2].clamp(min=1.0)
    fz = focal[:, None] / z  # (B, K)
    o = torch.zeros_like(z)
    dproj = torch.stack([fz, o, -fz * pc[..., 0] / z, o, fz, -fz * pc[..., 1] / z], -1)
    dproj = dproj.reshape(*z.shape, 2, 3)  # duv/d(camera-frame point)
    m = dproj @ cam_rot_mat[:, None]  # (B, K, 2, 3)
    jrot = -m @ skew(pts) @ right_jacobian(cam_rotvec)[:, None]
    return m, torch.cat([jrot, dproj], -1)


def edge_metric(uv, edges, emask, k_lmk2, k_edge, obs_len, fit_len):
    """The residuals' metric on the 136 landmark coordinates, so that the normal equations need
    only the landmarks' Jacobian: with J_uv (B, 136, N),  H = J_uvᵀ M J_uv,  g = J_uvᵀ q.

    uv (B, 68, 2) fitted landmarks px; edges (B, E, 2), emask (B, E) (an edge's weight where it
    is not 0 or 1); k_lmk2 (B, 1) or per coordinate (B, 136), k_edge (B,): the residual weights
    (r_lmk = k_lmk (uv − l), k_lmk2 = k_lmk²; r_edge = k_edge (‖l_i − l_j‖ − ‖uv_i − uv_j‖));
    obs_len, fit_len (B, E). Returns M (B, 136, 136) and q (B, 136) without the landmark term's
    part of q (k_lmk² (uv − l), added by the caller). An edge (i, j) with unit direction u
    adds ±k²·uuᵀ to the four 2×2 blocks (i, i), (j, j), (i, j), (j, i).
    """
    b, e = edges.shape[:2]
    i, j = edges[..., 0], edges[..., 1]
    d = (torch.gather(uv, 1, i[..., None].expand(-1, -1, 2))
         - torch.gather(uv, 1, j[..., None].expand(-1, -1, 2)))
    unit = d / fit_len.clamp(min=1e-6)[..., None]  # (B, E, 2)
    k2 = (k_edge[:, None] ** 2) * emask  # (B, E)
    blk = k2[..., None, None] * unit[..., :, None] * unit[..., None, :]  # (B, E, 2, 2)
    ax = torch.arange(2, device=uv.device)
    rows_i, rows_j = 2 * i[..., None] + ax, 2 * j[..., None] + ax  # (B, E, 2)

    def flat(r, c):  # (B, E, 2) rows, (B, E, 2) cols → (B, E·4) indices into the 136² matrix
        return (r[..., :, None] * 136 + c[..., None, :]).reshape(b, -1)

    idx = torch.cat([flat(rows_i, rows_i), flat(rows_j, rows_j), flat(rows_i, rows_j),
                     flat(rows_j, rows_i)], 1)
    blk = blk.reshape(b, -1)
    vals = torch.cat([blk, blk, -blk, -blk], 1)
    m = torch.zeros(b, 136 * 136, dtype=uv.dtype, device=uv.device).scatter_add_(1, idx, vals)
    m = m.reshape(b, 136, 136)
    m.diagonal(dim1=1, dim2=2).add_(k_lmk2)
    # J_eᵀ r_e with r_e = k (obs − len), dr_e = −k uᵀ (dJ_i − dJ_j)
    w = (-(k2 * (obs_len - fit_len)))[..., None] * unit  # (B, E, 2) at i; the negative at j
    q = torch.zeros(b, 136, dtype=uv.dtype, device=uv.device)
    q.scatter_add_(1, rows_i.reshape(b, -1), w.reshape(b, -1))
    q.scatter_add_(1, rows_j.reshape(b, -1), -w.reshape(b, -1))
    return m, q


def _damp_(h, lam):
    """h += λ·diag(h) in place, λ (B,) (a tiny floor keeps a parameter the data does not see
    solvable). Returns h."""
    d = h.diagonal(dim1=1, dim2=2)
    d.mul_(1 + lam[:, None]).add_(1e-9 * d.amax(1, keepdim=True) + 1e-12)
    return h


def _chol_solve(chol, rhs):
    """L Lᵀ x = rhs for lower-triangular L (B, n, n), rhs (B, n, k) (two triangular solves:
    much faster than cholesky_solve for small batched systems on CPU)."""
    y = torch.linalg.solve_triangular(chol, rhs, upper=False)
    return torch.linalg.solve_triangular(chol.transpose(1, 2), y, upper=True)


def solve_step(h, g, lam, pidx, n_person, n_local):
    """The damped Gauss-Newton step, shared parameters eliminated per person.

    h (B, N, N), g (B, N) per face (the prior included), columns ordered each face's own
    parameters first (n_local of them), then its person's shared ones; lam (n_person,) damping;
    pidx (B,) person of each face. Returns the per-face step (B, n_local) and the per-person
    step (n_person, N − n_local), both float64: the minimizer of the damped quadratic model
    summed over each person's faces. Each face's own block A is eliminated (Schur complement:
    S_p = Σ_faces (C − Bᵀ A⁻¹ B)), the shared step solved per person, the faces' own steps
    recovered; a face alone in its person gets exactly the joint solve of its system.
    """
    h, g = h.double(), g.double()  # (copies: damped in place below)
    n = g.shape[1]
    lam = lam.double()
    a = _damp_(h[:, :n_local, :n_local].clone(), lam[pidx])
    gl = g[:, :n_local, None]
    chol, _ = torch.linalg.cholesky_ex(a)
    if n == n_local:
        return -_chol_solve(chol, gl)[..., 0], g.new_zeros(n_person, 0)
    bm, cm = h[:, :n_local, n_local:], h[:, n_local:, n_local:]
    y = torch.linalg.solve_triangular(chol, torch.cat([bm, gl], -1), upper=False)
    yb, yg = y[..., :-1], y[..., -1:]  # L⁻¹B, L⁻¹g_l
    s_face = cm - yb.transpose(1, 2) @ yb
    r_face = g[:, n_local:] - (yb.transpose(1, 2) @ yg)[..., 0]
    if n_person == len(g) and bool((pidx == torch.arange(len(g), device=pidx.device)).all()):
        s, r, cdiag = s_face, r_face, cm.diagonal(dim1=1, dim2=2)
    else:
        ns = n - n_local
        s = g.new_zeros(n_person, ns, ns).index_add_(0, pidx, s_face)
        r = g.new_zeros(n_person, ns).index_add_(0, pidx, r_face)
        cdiag = g.new_zeros(n_person, ns).index_add_(0, pidx, cm.diagonal(dim1=1, dim2=2))
    s.diagonal(dim1=1, dim2=2).add_(lam[:, None] * cdiag + 1e-9 * cdiag.amax(1, keepdim=True) + 1e-12)
    dg = -_chol_solve(torch.linalg.cholesky_ex(s)[0], r[..., None])[..., 0]  # (n_person, G)
    dl = -_chol_solve(chol, gl + bm @ dg[pidx][..., None])[..., 0]
    return dl, dg


def person_sum(values: torch.Tensor, pidx: torch.Tensor, n_person: int) -> torch.Tensor:
    """(B,) per face → (n_person,) sums."""
    return torch.zeros(n_person, dtype=values.dtype, device=values.device).index_add_(0, pidx, values)


__all__ = ["PointTables", "effective_rows", "landmark_jacobian", "landmark_uv_jacobian",
           "projection_jacobian",
           "edge_metric", "solve_step", "right_jacobian", "skew", "person_sum", "N_RIGID"]
