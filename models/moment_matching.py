"""Exact moments of functions of Gaussian inputs, as PILCO propagates them (Deisenroth 2010).

Every map takes a Gaussian x ~ N(mean (B, D), cov (B, D, D)) and returns the mean (B, E) and
covariance (B, E, E) of its output y and C (B, D, E), the input-output covariance premultiplied
by the inverse input covariance: Cov[x, y] = cov @ C. C is the expected Jacobian E[dy/dx] (Stein's
lemma), so it stays well defined when cov is singular, and maps chain: a variable z jointly
Gaussian with x has Cov[z, y] = Cov[z, x] @ C.

The maps: sines and cosines (`trig_moments`, `augment_with_trig`), the sine saturation of PILCO's
policies (`sine_saturation`), and a Gaussian-process posterior with a squared-exponential ARD
kernel (`se_moment_match`). All are batched over the leading dimension B and differentiable with
torch autograd.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Moments(NamedTuple):
    """mean (B, E), cov (B, E, E), C (B, D, E) with Cov[input, output] = input cov @ C."""

    mean: torch.Tensor
    cov: torch.Tensor
    C: torch.Tensor


def symmetrize(a: torch.Tensor) -> torch.Tensor:
    return 0.5 * (a + a.transpose(-1, -2))


def trig_moments(mean: torch.Tensor, cov: torch.Tensor) -> Moments:
    """Moments of [sin w, cos w] (B, 2k) for w ~ N(mean (B, k), cov (B, k, k)).

    With v_i = cov_ii and c = cov_ij, E[sin w_i] = exp(-v_i/2) sin m_i, E[cos w_i] = exp(-v_i/2) cos m_i,
    and the products follow from cos(a -+ b), sin(a +- b) whose arguments are Gaussian with
    variance v_i + v_j -+ 2 c. C = [diag(E cos w), -diag(E sin w)] (B, k, 2k).
    """
    v = torch.diagonal(cov, dim1=-2, dim2=-1)
    decay = torch.exp(-0.5 * v)
    e_sin, e_cos = decay * torch.sin(mean), decay * torch.cos(mean)

    a = -0.5 * (v[..., :, None] + v[..., None, :])  # log of decay_i decay_j
    up = 0.5 * _exp_times_expm1(a, cov)  # decay_i decay_j (exp(c) - 1) / 2
    down = 0.5 * _exp_times_expm1(a, -cov)  # decay_i decay_j (exp(-c) - 1) / 2
    diff = mean[..., :, None] - mean[..., None, :]
    plus = mean[..., :, None] + mean[..., None, :]
    cos_diff, cos_plus = torch.cos(diff), torch.cos(plus)
    ss = up * cos_diff - down * cos_plus
    cc = up * cos_diff + down * cos_plus
    sc = down * torch.sin(plus) + up * torch.sin(diff)  # Cov[sin w_i, cos w_j]
    cov_out = torch.cat([torch.cat([ss, sc], dim=-1), torch.cat([sc.transpose(-1, -2), cc], dim=-1)], dim=-2)
    mean_out = torch.cat([e_sin, e_cos], dim=-1)
    C = torch.cat([torch.diag_embed(e_cos), -torch.diag_embed(e_sin)], dim=-1)
    return Moments(mean_out, cov_out, C)


def _exp_times_expm1(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """exp(a) (exp(c) - 1) for a + c <= 0, finite (with finite gradients) for any variance.

    exp(a) expm1(c) keeps its accuracy for small c but overflows to inf * 0 for large variances;
    exp(a + c) - exp(a) cannot overflow. Each branch sees only arguments where it is finite.
    """
    small = c < 1.0
    near = torch.exp(a) * torch.expm1(torch.clamp(c, max=1.0))
    far = torch.exp(torch.clamp(a + c, max=0.0)) - torch.exp(a)
    return torch.where(small, near, far)


def augment_with_trig(mean: torch.Tensor, cov: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Gaussian over x (B, n) extended to [x, sin x_index, cos x_index] (B, n + 2k), as PILCO's gTrig.

    index: (k,) long, the angle entries. The extension is moment matched: its mean and covariance
    are exact, its Gaussian shape is the approximation.
    """
    augmented = augment_with_trig_moments(mean, cov, index)
    return augmented.mean, augmented.cov


def augment_with_trig_moments(mean: torch.Tensor, cov: torch.Tensor, index: torch.Tensor) -> Moments:
    """`augment_with_trig` with C (B, k, 2k) of the (sin, cos) entries with respect to the angles, so
    that any variable z jointly Gaussian with x gets Cov[z, (sin, cos)] = Cov[z, x_index] @ C."""
    if index.numel() == 0:
        return Moments(mean, cov, mean.new_zeros(mean.shape[0], 0, 0))
    trig = trig_moments(mean[..., index], cov[..., index[:, None], index[None, :]])
    cross = cov[..., :, index] @ trig.C  # Cov[x, (sin, cos)]: (B, n, 2k)
    mean_out = torch.cat([mean, trig.mean], dim=-1)
    top = torch.cat([cov, cross], dim=-1)
    bottom = torch.cat([cross.transpose(-1, -2), trig.cov], dim=-1)
    return Moments(mean_out, torch.cat([top, bottom], dim=-2), trig.C)


def sine_saturation(mean: torch.Tensor, cov: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> Moments:
    """Moments of u = c + r (9 sin x + sin 3x) / 8 elementwise (PILCO's gSat), c = (high + low)/2,
    r = (high - low)/2: a smooth squashing of any x (B, m) into [low, high] (m,)."""
    m = mean.shape[-1]
    centre, half = 0.5 * (high + low), 0.5 * (high - low)
    eye = torch.eye(m, dtype=mean.dtype, device=mean.device)
    lift = torch.cat([eye, 3.0 * eye], dim=0)  # w = lift @ x = [x, 3x]
    w_mean = mean @ lift.T
    w_cov = lift @ cov @ lift.T
    trig = trig_moments(w_mean, w_cov)
    mix = torch.cat([9.0 / 8.0 * eye, 1.0 / 8.0 * eye], dim=1) * half[:, None]  # u - c = mix @ sin w
    mean_out = centre + trig.mean[..., : 2 * m] @ mix.T
    cov_out = mix @ trig.cov[..., : 2 * m, : 2 * m] @ mix.T
    C = lift.T @ trig.C[..., : 2 * m] @ mix.T
    return Moments(mean_out, symmetrize(cov_out), C)


def linear_moments(mean: torch.Tensor, cov: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> Moments:
    """Moments of y = weight (E, D) @ x + bias (E,)."""
    C = weight.T.expand(cov.shape[:-2] + weight.T.shape)
    return Moments(mean @ weight.T + bias, symmetrize(weight @ cov @ weight.T), C)


def se_moment_match(
    mean: torch.Tensor,
    cov: torch.Tensor,
    inputs: torch.Tensor,
    beta: torch.Tensor,
    lengthscales: torch.Tensor,
    signal_var: torch.Tensor,
    uncertainty: torch.Tensor | None = None,
) -> Moments:
    """Moments of f(x) for E independent GP posteriors with SE-ARD kernels and x ~ N(mean, cov).

    The posterior of output a at x is mean  k_a(x, X) beta_a  and variance
    signal_var_a - k_a(x, X) iK_a k_a(X, x), with k_a(x, x') = signal_var_a exp(-|x - x'|^2_{L_a^-1} / 2).

    inputs: (N, D) training (or inducing) inputs shared by all outputs; beta: (E, N);
    lengthscales: (E, D); signal_var: (E,).
    uncertainty: None to match only the posterior mean (a deterministic function such as an RBF
    network), or (P, N, N) from `uncertainty_weights` (computed once per fit); then the covariance
    includes E_x[var f(x)].
    Returns mean (B, E), cov (B, E, E) and C (B, D, E); mean and cov are those of the latent f.
    """
    B, D = mean.shape
    E = beta.shape[0]
    eye = torch.eye(D, dtype=mean.dtype, device=mean.device)
    nu = inputs[None, :, :] - mean[:, None, :]  # (B, N, D)
    inv_ell = 1.0 / lengthscales  # (E, D)

    # Mean and C: with A_a = L_a^-1/2 cov L_a^-1/2 + I (SPD, eigenvalues >= 1),
    # q_ai = s_a |A_a|^-1/2 exp(-nu_i^T (cov + L_a)^-1 nu_i / 2) and (cov + L_a)^-1 = L^-1/2 A^-1 L^-1/2.
    A = inv_ell[None, :, :, None] * cov[:, None] * inv_ell[None, :, None, :] + eye  # (B, E, D, D)
    L = torch.linalg.cholesky(A)
    scaled = nu[:, None] * inv_ell[None, :, None, :]  # (B, E, N, D)
    t = torch.cholesky_solve(scaled.transpose(-1, -2), L).transpose(-1, -2) * inv_ell[None, :, None, :]
    half_logdet = torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)  # (B, E)
    log_q = torch.log(signal_var)[:, None] - half_logdet[..., None] - 0.5 * (nu[:, None] * t).sum(-1)  # (B, E, N)
    bq = beta * torch.exp(log_q)
    M = bq.sum(-1)
    C = torch.einsum("ben,bend->bde", bq, t)

    # Covariance: for each pair a <= b, with Lab = L_a^-1 + L_b^-1 = diag(d), R = cov Lab + I and
    # z_ij = L_a^-1 nu_i + L_b^-1 nu_j, Q_ab,ij = k_a(x_i, m) k_b(x_j, m) |R|^-1/2 exp(z^T R^-1 cov z / 2).
    # R^-1 cov = d^-1/2 (I - G^-1) d^-1/2 with G = d^1/2 cov d^1/2 + I (SPD): symmetric by construction.
    a_idx, b_idx = torch.triu_indices(E, E, device=mean.device)
    inv_lam = inv_ell**2  # (E, D)
    d_sqrt = torch.sqrt(inv_lam[a_idx] + inv_lam[b_idx])  # (P, D)
    G = d_sqrt[None, :, :, None] * cov[:, None] * d_sqrt[None, :, None, :] + eye  # (B, P, D, D)
    LG = torch.linalg.cholesky(G)
    T = (eye - torch.cholesky_inverse(LG)) / (d_sqrt[:, :, None] * d_sqrt[:, None, :])  # (B, P, D, D)
    zeta = nu[:, None] * inv_lam[None, :, None, :]  # (B, E, N, D)
    za, zb = zeta[:, a_idx], zeta[:, b_idx]  # (B, P, N, D)
    za_T = za @ T
    maha = 0.5 * (nu[:, None] * zeta).sum(-1)  # nu^T L^-1 nu / 2: (B, E, N)
    log_k = torch.log(signal_var)[None, :, None] - maha
    half_logdet_G = torch.log(torch.diagonal(LG, dim1=-2, dim2=-1)).sum(-1)  # (B, P)
    row = log_k[:, a_idx] + 0.5 * (za_T * za).sum(-1) - half_logdet_G[..., None]  # (B, P, N)
    col = log_k[:, b_idx] + 0.5 * ((zb @ T) * zb).sum(-1)
    # log Q_ij = row_i + col_j + za_i^T T zb_j, all in one product of (N, D+2) factors: the N x N
    # exponent is written once, with no separate passes to add the row and column terms.
    ones = torch.ones_like(row)[..., None]
    left = torch.cat([za_T, row[..., None], ones], dim=-1)
    right = torch.cat([zb, ones, col[..., None]], dim=-1)
    Q = torch.exp(left @ right.transpose(-1, -2))  # (B, P, N, N)
    if uncertainty is None:
        second = torch.einsum("bpij,pi,pj->bp", Q, beta[a_idx], beta[b_idx])
    else:
        second = torch.einsum("bpij,pij->bp", Q, uncertainty)
    S = torch.zeros(B, E, E, dtype=mean.dtype, device=mean.device)
    S = S.index_put((torch.arange(B)[:, None], a_idx[None], b_idx[None]), second)
    S = S + torch.triu(S, diagonal=1).transpose(-1, -2)
    if uncertainty is not None:
        S = S + torch.diag_embed(signal_var).expand(B, E, E)
    S = S - M[:, :, None] * M[:, None, :]
    return Moments(M, symmetrize(S), C)


def uncertainty_weights(beta: torch.Tensor, inv_k: torch.Tensor) -> torch.Tensor:
    """W (P, N, N) for `se_moment_match`: one matrix beta_a beta_b^T - delta_ab iK_a per output pair
    a <= b, in the order of torch.triu_indices(E, E). beta: (E, N); inv_k: (E, N, N)."""
    E = beta.shape[0]
    a_idx, b_idx = torch.triu_indices(E, E, device=beta.device)
    W = beta[a_idx, :, None] * beta[b_idx, None, :]
    diagonal = a_idx == b_idx
    W[diagonal] = W[diagonal] - inv_k
    return W
