"""Student-t mixture (CXR-CML Eq. 1-2) fitted by ECM in torch."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import multivariate_t
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture

from cxrfm.training.losses.student_t_mixture import fit_student_t_mixture, kmeans_plusplus, pseudo_labels


def heavy_tailed_clusters(seed: int, n: int = 800, df: float = 1.5, separation: float = 10.0):
    """Three 2-D clusters (a triangle of side `separation`) with Student-t noise of df 1.5 (infinite variance)."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [separation, 0.0], [separation / 2, separation * 0.87]])
    labels = rng.integers(0, 3, n)
    return centres[labels] + rng.standard_t(df, size=(n, 2)), labels


def test_eq2_matches_scipy_multivariate_t():
    generator = torch.Generator().manual_seed(0)
    data = torch.randn(50, 3, generator=generator, dtype=torch.float64) * 2
    for covariance_type in ("diag", "full"):
        mixture = fit_student_t_mixture(data, 2, nu=4.0, covariance_type=covariance_type, max_iter=3, generator=generator)
        ours = (mixture.component_log_prob(data) - mixture.weights.log()).numpy()
        for k in range(2):
            shape = mixture.covariances[0, k].numpy()
            shape = np.diag(shape) if covariance_type == "diag" else shape
            reference = multivariate_t(loc=mixture.means[0, k].numpy(), shape=shape, df=4.0).logpdf(data.numpy())
            np.testing.assert_allclose(ours[:, k], reference, rtol=1e-10)


def test_t_mixture_assigns_heavy_tailed_points_better_than_a_gmm():
    """ARI against the true clusters, t-mixture (nu = 4, 16 restarts fitted as one batch, best log-likelihood) vs
    scikit-learn's GaussianMixture (16 restarts), both diagonal. Measured: t 0.765 vs GMM 0.480, mean over 6 seeds
    (seeds 0-5: t 0.85 0.87 0.85 0.41 0.80 0.81, GMM 0.50 0.61 0.48 0.38 0.47 0.45; t ahead on all 6).
    """
    t_scores, gmm_scores = [], []
    for seed in range(6):
        data, truth = heavy_tailed_clusters(seed)
        restarts = torch.tensor(data).expand(16, -1, -1)
        mixture = fit_student_t_mixture(restarts, 3, nu=4.0, generator=torch.Generator().manual_seed(seed))
        best = int(mixture.log_likelihood[-1].argmax())
        t_labels = pseudo_labels(mixture.responsibilities(restarts)[best]).numpy()
        gmm = GaussianMixture(3, covariance_type="diag", n_init=16, random_state=seed).fit(data)
        t_scores.append(adjusted_rand_score(truth, t_labels))
        gmm_scores.append(adjusted_rand_score(truth, gmm.predict(data)))
    assert np.mean(t_scores) - np.mean(gmm_scores) > 0.2, (t_scores, gmm_scores)
    assert sum(t > g for t, g in zip(t_scores, gmm_scores)) >= 5


@pytest.mark.parametrize("covariance_type", ["diag", "full"])
@pytest.mark.parametrize("estimate_nu", [False, True])
@pytest.mark.parametrize("init", ["kmeans++", "gmm"])
def test_log_likelihood_never_decreases(covariance_type, estimate_nu, init):
    data, _ = heavy_tailed_clusters(0, n=300)
    mixture = fit_student_t_mixture(
        torch.tensor(data).expand(2, -1, -1), 3, nu=4.0, estimate_nu=estimate_nu, covariance_type=covariance_type,
        init=init, max_iter=30, tol=0.0, generator=torch.Generator().manual_seed(1),
    )
    history = mixture.log_likelihood
    assert history.shape == (31, 2)
    assert (history[1:] - history[:-1]).min() >= -1e-10
    assert (history[-1] > history[0]).all()


def test_estimated_nu_recovers_the_generating_value():
    rng = np.random.default_rng(0)
    data = torch.tensor(multivariate_t(loc=np.zeros(3), shape=np.eye(3), df=3.0).rvs(5000, random_state=rng))
    mixture = fit_student_t_mixture(data, 1, nu=20.0, estimate_nu=True, max_iter=200, tol=1e-8)
    assert mixture.nu.item() == pytest.approx(3.0, rel=0.1)
    assert mixture.converged


def test_gaussian_limit_matches_sklearn_log_likelihood():
    """nu = inf is a Gaussian mixture: on separated Gaussian clusters it reaches scikit-learn's log-likelihood."""
    rng = np.random.default_rng(0)
    data = np.concatenate([rng.normal(m, 1.0, size=(200, 4)) for m in (-6.0, 0.0, 6.0)])
    ours = fit_student_t_mixture(torch.tensor(data), 3, nu=float("inf"), covariance_type="full", tol=1e-10,
                                 generator=torch.Generator().manual_seed(0))
    reference = GaussianMixture(3, covariance_type="full", tol=1e-10, reg_covar=1e-6, random_state=0).fit(data)
    assert ours.score(torch.tensor(data)).item() == pytest.approx(reference.score(data), abs=1e-6)


def test_deterministic_under_a_seed():
    data = torch.tensor(heavy_tailed_clusters(2, n=200)[0], dtype=torch.float32)
    fits = [fit_student_t_mixture(data, 3, estimate_nu=True, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    for name in ("weights", "means", "covariances", "nu", "log_likelihood"):
        assert torch.equal(getattr(fits[0], name), getattr(fits[1], name))
    seeds = [kmeans_plusplus(data[None], 3, torch.Generator().manual_seed(s)) for s in (0, 1)]
    assert not torch.equal(seeds[0], seeds[1])
    soft = fits[0].responsibilities(data)
    assert soft.shape == (200, 3) and torch.allclose(soft.sum(-1), torch.ones(200))
    assert torch.equal(pseudo_labels(soft), soft.argmax(-1)) and pseudo_labels(soft, soft=True) is soft


def test_bad_input():
    data = torch.randn(10, 2)
    with pytest.raises(ValueError, match="covariance_type"):
        fit_student_t_mixture(data, 2, covariance_type="spherical")
    with pytest.raises(ValueError, match="n_components"):
        fit_student_t_mixture(data, 11)
    with pytest.raises(ValueError, match="init"):
        fit_student_t_mixture(data, 2, init="random")
    with pytest.raises(ValueError, match="estimate_nu"):
        fit_student_t_mixture(data, 2, nu=float("inf"), estimate_nu=True)


def test_full_covariance_with_fewer_points_than_dimensions():
    """N < D (a batch of 32 in 512-d): the floor is applied through the N x N Gram matrix; it must equal the D x D
    eigenvalue clamp, and EM must stay monotone."""
    from cxrfm.training.losses.student_t_mixture import _m_step

    generator = torch.Generator().manual_seed(0)
    data = F.normalize(torch.randn(1, 24, 40, generator=generator, dtype=torch.float64), dim=-1)
    resp = torch.softmax(torch.randn(1, 24, 3, generator=generator, dtype=torch.float64), -1)
    u = torch.rand(1, 24, 3, generator=generator, dtype=torch.float64) + 0.5
    _, means, covariances = _m_step(data, resp, u, "full", 1e-4)
    weighted, counts = resp * u, resp.sum(1)
    centred = data[:, None] - means[:, :, None]
    scatter = (centred * weighted.transpose(1, 2)[..., None]).transpose(-1, -2) @ centred / counts[..., None, None]
    values, vectors = torch.linalg.eigh(scatter)
    reference = (vectors * values.clamp(min=1e-4)[..., None, :]) @ vectors.transpose(-1, -2)
    torch.testing.assert_close(covariances, reference, rtol=0, atol=1e-12)
    mixture = fit_student_t_mixture(data[0], 3, covariance_type="full", covariance_floor=1e-4, max_iter=15, tol=0.0,
                                    generator=generator)
    assert (mixture.log_likelihood[1:] - mixture.log_likelihood[:-1]).min() >= -1e-10
