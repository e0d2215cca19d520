"""Mixture of multivariate Student-t distributions fitted by EM in torch (CXR-CML paper, Eq. 1-2).

    p(z) = sum_k pi_k T(z | mu_k, Sigma_k, nu)                                              (Eq. 1)
    T(z | mu, Sigma, nu) = Gamma((nu+d)/2) / (Gamma(nu/2) (nu pi)^(d/2) |Sigma|^(1/2))
                           * (1 + delta / nu)^(-(nu+d)/2),   delta = (z-mu)^T Sigma^-1 (z-mu)    (Eq. 2)

The paper names the model but not how it is fitted; we use the ECM algorithm of Peel & McLachlan (2000, "Robust
mixture modelling using the t distribution"): the E-step gives responsibilities tau_ik and latent precision weights
u_ik = (nu + d) / (nu + delta_ik); CM-step 1 updates pi_k = n_k / N, mu_k = sum_i tau_ik u_ik z_i / sum_i tau_ik u_ik,
Sigma_k = sum_i tau_ik u_ik (z_i - mu_k)(z_i - mu_k)^T / n_k (n_k = sum_i tau_ik); CM-step 2 (``estimate_nu``)
solves for one nu shared by the components (Eq. 1 has a single nu)

    -psi(nu/2) + log(nu/2) + 1 + (1/N) sum_ik tau_ik (log u_ik - u_ik) + psi((nu_old+d)/2) - log((nu_old+d)/2) = 0

by bisection on log nu. ``nu = inf`` is the Gaussian mixture (u_ik = 1), used by the ``"gmm"`` initialisation.

Covariances are ``"diag"`` or ``"full"`` with a floor: variances (diag) or eigenvalues (full) are clamped at
``covariance_floor``. Clamping is the exact maximiser of the M-step under the constraint Sigma >= floor * I, so the
log-likelihood never decreases over iterations (scikit-learn instead adds ``reg_covar`` to the diagonal).

Everything is batched over a leading group axis G (independent mixtures fitted at once: restarts, several batches),
runs on the device of the data, and draws its randomness (k-means++ seeding) from an explicit ``torch.Generator``.
Shapes: data (G, N, D) or (N, D); weights (G, K); means (G, K, D); covariances (G, K, D) diag or (G, K, D, D) full.
"""

import math
from dataclasses import dataclass

import torch

COVARIANCE_TYPES = ("diag", "full")
INITS = ("kmeans++", "gmm")
NU_BOUNDS = (1e-2, 1e3)  # bisection range of the estimated nu; 1e3 is Gaussian for practical purposes


@dataclass
class StudentTMixture:
    """A fitted mixture, always with the group axis G (G = 1 for (N, D) data). ``nu`` is (G,) (``inf`` for a Gaussian mixture); ``log_likelihood`` is (T, G), the mean
    per-sample log-likelihood at the start of each EM iteration and after the last one."""

    weights: torch.Tensor
    means: torch.Tensor
    covariances: torch.Tensor
    nu: torch.Tensor
    covariance_type: str
    log_likelihood: torch.Tensor | None = None
    converged: bool = False

    def log_density(self, data: torch.Tensor) -> torch.Tensor:
        """(G, N, K) log T(z_i | mu_k, Sigma_k, nu) (Eq. 2; Gaussian where nu is inf); (N, K) for (N, D) data and
        G = 1."""
        batched, squeeze = _batched(data.to(self.means.dtype))
        logdet, delta = _logdet_and_mahalanobis(batched, self.means, self.covariances, self.covariance_type)
        out = student_t_log_density(delta, logdet, self.nu, batched.shape[-1])
        return out[0] if squeeze and len(out) == 1 else out

    def component_log_prob(self, data: torch.Tensor) -> torch.Tensor:
        """log pi_k + log T(z_i | mu_k, Sigma_k, nu), shaped as ``log_density``."""
        log_weights = self.weights.log()[:, None, :]
        return self.log_density(data) + (log_weights[0] if data.dim() == 2 and len(self.weights) == 1 else log_weights)

    def responsibilities(self, data: torch.Tensor) -> torch.Tensor:
        """(G, N, K) or (N, K) posterior probabilities tau_ik of each component (soft pseudo-labels)."""
        return self.component_log_prob(data).softmax(dim=-1)

    def score(self, data: torch.Tensor) -> torch.Tensor:
        """Mean per-sample log-likelihood of ``data`` (log of Eq. 1), (G,) or a scalar."""
        return self.component_log_prob(data).logsumexp(dim=-1).mean(dim=-1)


def pseudo_labels(responsibilities: torch.Tensor, soft: bool = False) -> torch.Tensor:
    """Hard pseudo-labels (argmax component, (..., N) long) or soft ones (the responsibilities, (..., N, K))."""
    return responsibilities if soft else responsibilities.argmax(dim=-1)


def student_t_log_density(delta: torch.Tensor, logdet: torch.Tensor, nu: torch.Tensor, dim: int) -> torch.Tensor:
    """log T of Eq. 2 from Mahalanobis distances ``delta`` (G, N, K), log|Sigma_k| (G, K) and nu (G,)."""
    gaussian = -0.5 * (dim * math.log(2 * math.pi) + logdet[:, None, :] + delta)
    nu_ = nu.clamp(max=1e30)[:, None, None]  # finite stand-in keeps the inf (Gaussian) groups NaN-free below
    student = (
        torch.lgamma((nu_ + dim) / 2) - torch.lgamma(nu_ / 2) - 0.5 * dim * torch.log(nu_ * math.pi)
        - 0.5 * logdet[:, None, :] - 0.5 * (nu_ + dim) * torch.log1p(delta / nu_)
    )
    return torch.where(torch.isinf(nu)[:, None, None], gaussian, student)


def fit_student_t_mixture(
    data: torch.Tensor,
    n_components: int,
    nu: float = 4.0,
    estimate_nu: bool = False,
    covariance_type: str = "diag",
    covariance_floor: float = 1e-6,
    init: str = "kmeans++",
    max_iter: int = 100,
    tol: float = 1e-4,
    gmm_init_iter: int = 10,
    generator: torch.Generator | None = None,
) -> StudentTMixture:
    """Fit G independent t-mixtures to ``data`` (G, N, D) or (N, D) by ECM (module docstring).

    Args:
        nu: degrees of freedom (initial value when ``estimate_nu``); ``float("inf")`` fits a Gaussian mixture.
        init: ``"kmeans++"`` (k-means++ seeds, hard nearest-seed assignment, one M-step, as scikit-learn) or
            ``"gmm"`` (that, then ``gmm_init_iter`` Gaussian EM iterations: the paper's "GMM refined by a
            Student-t").
        tol: stop when every group's mean log-likelihood gains less than ``tol``; 0 runs ``max_iter`` iterations.
        generator: source of the k-means++ draws (CPU or the data's device); same seed, same fit.
    """
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}, got {covariance_type!r}.")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}.")
    if not (nu > 0 and covariance_floor > 0 and max_iter >= 1):
        raise ValueError(f"nu > 0, covariance_floor > 0 and max_iter >= 1 are required (got {nu}, {covariance_floor}, {max_iter}).")
    if estimate_nu and math.isinf(nu):
        raise ValueError("estimate_nu needs a finite initial nu.")
    data, _ = _batched(data)
    groups, n_samples, dim = data.shape
    if not 1 <= n_components <= n_samples:
        raise ValueError(f"n_components must be in [1, N={n_samples}], got {n_components}.")
    seeds = kmeans_plusplus(data, n_components, generator)
    hard = (seeds.square().sum(-1)[:, None, :] - 2 * data @ seeds.transpose(1, 2)).argmin(dim=-1)  # nearest seed
    resp = torch.nn.functional.one_hot(hard, n_components).to(data.dtype)
    ones = torch.ones_like(resp)
    weights, means, covariances = _m_step(data, resp, ones, covariance_type, covariance_floor)
    if init == "gmm":
        gaussian = StudentTMixture(weights, means, covariances, data.new_full((groups,), math.inf), covariance_type)
        gaussian = _em(data, gaussian, False, covariance_floor, gmm_init_iter, 0.0)
        weights, means, covariances = gaussian.weights, gaussian.means, gaussian.covariances
    mixture = StudentTMixture(weights, means, covariances, data.new_full((groups,), float(nu)), covariance_type)
    return _em(data, mixture, estimate_nu, covariance_floor, max_iter, tol)


def kmeans_plusplus(data: torch.Tensor, n_clusters: int, generator: torch.Generator | None = None,
                    local_trials: int | None = None) -> torch.Tensor:
    """Greedy k-means++ seeds (Arthur & Vassilvitskii 2007; greedy as in scikit-learn): the first seed uniform,
    then ``local_trials`` (default 2 + log K) candidates drawn with probability proportional to the squared distance
    to the nearest seed so far, keeping the one that lowers the total squared distance most. (G, N, D) -> (G, K, D)."""
    groups, n_samples, _ = data.shape
    trials = local_trials or 2 + int(math.log(n_clusters))
    gen_device = generator.device if generator is not None else torch.device("cpu")
    draws = torch.rand((n_clusters, groups, trials), generator=generator, device=gen_device, dtype=torch.float64)
    draws = draws.to(data.device)
    rows = torch.arange(groups, device=data.device)
    norms = data.square().sum(-1)  # (G, N)

    def squared_distances(points):  # (G, L, D) -> (G, L, N)
        return (norms[:, None, :] - 2 * points @ data.transpose(1, 2) + points.square().sum(-1)[..., None]).clamp(min=0)

    index = (draws[0, :, 0] * n_samples).long().clamp(max=n_samples - 1)
    seeds = [data[rows, index]]
    nearest = squared_distances(seeds[0][:, None])[:, 0]
    for k in range(1, n_clusters):
        cumulative = nearest.double().cumsum(-1)
        # all points on seeds already (duplicates): a tiny mass everywhere falls back to uniform draws
        cumulative = cumulative + torch.arange(1, n_samples + 1, device=data.device) * 1e-300
        candidates = torch.searchsorted(cumulative, draws[k] * cumulative[:, -1:]).clamp(max=n_samples - 1)  # (G, L)
        points = data[rows[:, None], candidates]  # (G, L, D)
        updated = torch.minimum(nearest[:, None, :], squared_distances(points))  # (G, L, N)
        best = updated.sum(-1).argmin(-1)  # (G,)
        seeds.append(points[rows, best])
        nearest = updated[rows, best]
    return torch.stack(seeds, dim=1)


def _batched(data: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if data.dim() == 2:
        return data[None], True
    if data.dim() != 3:
        raise ValueError(f"data must be (N, D) or (G, N, D), got shape {tuple(data.shape)}.")
    return data, False


def _logdet_and_mahalanobis(data, means, covariances, covariance_type, squared=None):
    """log|Sigma_k| (G, K) and delta_ik (G, N, K); ``squared`` = data ** 2 when the caller has it already."""
    if covariance_type == "diag":
        precision = covariances.reciprocal()  # (G, K, D)
        delta = (
            (data.square() if squared is None else squared) @ precision.transpose(1, 2)
            - 2 * data @ (means * precision).transpose(1, 2)
            + (means.square() * precision).sum(-1)[:, None, :]
        ).clamp(min=0)  # the expanded square can dip below 0 by rounding
        return covariances.log().sum(-1), delta
    cholesky = torch.linalg.cholesky(covariances)  # (G, K, D, D)
    centred = data[:, None] - means[:, :, None]  # (G, K, N, D)
    solved = torch.linalg.solve_triangular(cholesky, centred.transpose(-1, -2), upper=False)
    logdet = 2 * cholesky.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return logdet, solved.square().sum(-2).transpose(1, 2)


def _m_step(data, resp, precision_weights, covariance_type, floor, squared=None):
    """CM-step 1: weights, means, floored covariances from responsibilities tau (G, N, K) and u (G, N, K)."""
    eps = 10 * torch.finfo(data.dtype).eps  # an empty component must not divide by zero
    counts = resp.sum(1) + eps  # n_k (G, K)
    weighted = resp * precision_weights  # tau_ik u_ik
    first = weighted.transpose(1, 2) @ data  # (G, K, D)
    mass = weighted.sum(1)[..., None]  # (G, K, 1)
    means = first / (mass + eps)
    if covariance_type == "diag":
        second = weighted.transpose(1, 2) @ (data.square() if squared is None else squared)
        variances = second - 2 * means * first + mass * means.square()
        return counts / data.shape[1], means, (variances / counts[..., None]).clamp(min=floor)
    # scatter S_k = A^T A with rows of A = sqrt(tau u / n_k) (z_i - mu_k)
    rows = (data[:, None] - means[:, :, None]) * (weighted.transpose(1, 2) / counts[..., None])[..., None].sqrt()
    n_samples, dim = data.shape[1:]
    if n_samples >= dim:
        eigenvalues, eigenvectors = torch.linalg.eigh(rows.transpose(-1, -2) @ rows)
        covariances = (eigenvectors * eigenvalues.clamp(min=floor)[..., None, :]) @ eigenvectors.transpose(-1, -2)
    else:
        # fewer points than dimensions (a batch of 32 in 512-d): S has rank <= N, and its nonzero eigenpairs come
        # from the N x N Gram matrix A A^T = U L U^T (v = A^T u / sqrt(l)), so the same clamp is
        # floor I + A^T U diag(max(l - floor, 0) / l) U^T A, without a D x D eigendecomposition
        eigenvalues, vectors = torch.linalg.eigh(rows @ rows.transpose(-1, -2))
        scale = (eigenvalues - floor).clamp(min=0) / eigenvalues.clamp(min=torch.finfo(data.dtype).tiny)
        projected = rows.transpose(-1, -2) @ vectors  # (G, K, D, N)
        covariances = (projected * scale[..., None, :]) @ projected.transpose(-1, -2)
        covariances = covariances + floor * torch.eye(dim, dtype=data.dtype, device=data.device)
    return counts / data.shape[1], means, 0.5 * (covariances + covariances.transpose(-1, -2))


def _update_nu(nu_old, resp, precision_weights, dim):
    """CM-step 2 of Peel & McLachlan (2000): the shared nu (G,) by bisection on log nu (the left side is
    decreasing in nu, and 1 + mean(log u - u) + psi - log < 0 guarantees a root)."""
    constant = 1 + (resp * (precision_weights.log() - precision_weights)).sum((1, 2)) / resp.shape[1]
    constant = constant + torch.digamma((nu_old + dim) / 2) - torch.log((nu_old + dim) / 2)
    low = torch.full_like(nu_old, math.log(NU_BOUNDS[0]))
    high = torch.full_like(nu_old, math.log(NU_BOUNDS[1]))
    for _ in range(60):
        middle = (low + high) / 2
        half = middle.exp() / 2
        positive = (-torch.digamma(half) + torch.log(half) + constant) > 0
        low, high = torch.where(positive, middle, low), torch.where(positive, high, middle)
    return ((low + high) / 2).exp()


def _em(data, mixture, estimate_nu, floor, max_iter, tol) -> StudentTMixture:
    dim = data.shape[-1]
    squared = data.square() if mixture.covariance_type == "diag" else None  # reused by every E- and M-step
    history, converged = [], False
    weights, means, covariances, nu = mixture.weights, mixture.means, mixture.covariances, mixture.nu
    for _ in range(max_iter + 1):
        logdet, delta = _logdet_and_mahalanobis(data, means, covariances, mixture.covariance_type, squared)
        joint = weights.log()[:, None, :] + student_t_log_density(delta, logdet, nu, dim)
        # log-sum-exp and softmax from one exp (torch's logsumexp + softmax cost twice as much here)
        peak = joint.amax(-1, keepdim=True)
        unnormalised = (joint - peak).exp()
        total = unnormalised.sum(-1, keepdim=True)
        history.append((peak + total.log()).squeeze(-1).mean(-1))
        if len(history) > 1 and bool(((history[-1] - history[-2]).abs() < tol).all()):
            converged = True
            break
        if len(history) == max_iter + 1:
            break
        resp = unnormalised / total
        finite = torch.isfinite(nu)[:, None, None]
        precision_weights = torch.where(finite, (nu.clamp(max=1e30)[:, None, None] + dim) / (nu.clamp(max=1e30)[:, None, None] + delta), torch.ones_like(delta))
        weights, means, covariances = _m_step(data, resp, precision_weights, mixture.covariance_type, floor, squared)
        if estimate_nu:
            nu = _update_nu(nu, resp, precision_weights, dim)
    return StudentTMixture(weights, means, covariances, nu, mixture.covariance_type, torch.stack(history), converged)


__all__ = ["COVARIANCE_TYPES", "INITS", "StudentTMixture", "fit_student_t_mixture", "kmeans_plusplus", "student_t_log_density", "pseudo_labels"]
