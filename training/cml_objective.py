"""CXR-CML (paper 003) as an objective of the CLIP fine-tuning recipe: L = L_c + L_m (Eq. 4).

L_c is the recipe's contrastive loss (CLIP, with or without relaxed positives). L_m comes from cluster pseudo-labels
of the image embeddings, in one of two presets (``CML_PRESETS``):

- ``paper``: a Student-t mixture (Eq. 1-2, nu = 4, K = 40) fitted by ECM
  (:mod:`cxrfm.training.losses.student_t_mixture`), initialised by a Gaussian mixture ("GMM refined by a
  Student-t"), drives the triplet loss of Eq. 3 (:mod:`cxrfm.training.losses.triplet_loss`). The paper fits "given a
  batch" but a batch of 32 cannot hold 40 clusters, so by default the mixture is refit at every epoch start on a
  memory bank of the most recent image embeddings (``fit_on="epoch"``; the first fit happens as soon as the bank
  holds ``min_fit_size`` embeddings). ``fit_on="batch"`` fits every batch with the authors' batch-adaptive K.
- ``official``: the procedure of the authors' ``model.py`` (github.com/chinnarouge/CXR_CML): per batch a
  full-covariance Gaussian mixture (K from :func:`batch_components`, 3 restarts), ONE Student-t responsibility pass
  with fixed nu = 8 whose log-densities are clipped at +-700, temperature-0.05 softmax, inverse-log-count cluster
  weights, and a hinge on batch-mean image-text distances (:func:`official_metric_loss`). Theirs calls scikit-learn
  without a random_state; ours draws the k-means++ seeds from a generator seeded by (seed, step), so a run repeats
  exactly. In 512 dimensions the clip saturates (the own-cluster log-density is ~+3700) and the hinge is exactly 0 at
  the initial distance scale: tests/test_cml_objective.py shows both.

Clustering and the triplets see the embeddings of the whole global batch (gathered across processes); every process
computes the same full-batch L_m, and the gradient all-gather plus DDP's average give the full-batch gradient.
"""

import logging
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Callable

import torch
import torch.nn.functional as F

from .losses.student_t_mixture import StudentTMixture, fit_student_t_mixture
from .losses.triplet_loss import MININGS, triplet_loss
from .recipe import Objective

logger = logging.getLogger(__name__)

CML_PRESETS = {
    "paper": {"procedure": "paper", "n_components": 40, "nu": 4.0, "init": "gmm", "fit_on": "epoch"},
    "official": {"procedure": "official", "nu": 8.0, "covariance_type": "full", "n_init": 3, "em_iterations": 100,
                 "tol": 1e-3},
}


@dataclass
class CMLConfig:
    """Settings of L_m. Defaults are our reading of the paper; ``from_preset`` applies ``CML_PRESETS``."""

    procedure: str = "paper"  # paper | official
    n_components: int = 40  # K (paper: the 40 CXR-LT classes); per-batch fits use min(K, batch_components(B))
    nu: float = 4.0  # paper Table 3: nu = 4 best; official code: fixed 8
    estimate_nu: bool = False  # ECM update of nu (Peel & McLachlan 2000); the paper reports fixed values
    covariance_type: str = "diag"  # full 512 x 512 covariances per cluster are not estimable from a bank of 4096
    covariance_floor: float = 1e-6  # scikit-learn's reg_covar default, as the official code uses
    init: str = "gmm"  # gmm (the paper's GMM refined by a t) | kmeans++
    n_init: int = 1  # restarts fitted as one batch, best log-likelihood kept
    em_iterations: int = 100
    tol: float = 1e-4
    fit_on: str = "epoch"  # epoch (memory bank) | batch
    memory_bank_size: int = 4096
    min_fit_size: int = 0  # bank size for the first fit; 0 = 4 K
    soft_labels: bool = False  # hard argmax pseudo-labels (paper: "pseudo-labels guide the selection of triplets")
    mining: str = "batch_all"
    margin: float = 0.3  # alpha; the paper gives none, 0.3 is the margin of the authors' (unused) triplet loss
    triplet_modality: str = "image"  # image (anchors, positives, negatives all images) | image_text (text p, n)
    weight: float = 1.0  # L = L_c + weight L_m (paper: equal weights)
    official_temperature: float = 0.05  # softmax temperature of the official responsibilities
    official_log_density_clip: float = 700.0
    official_distance_temp: float = 0.07  # their learnable temp at init; distances are scaled by exp(temp)
    seed: int = 0

    def __post_init__(self):
        choices = {"procedure": ("paper", "official"), "fit_on": ("epoch", "batch"), "mining": MININGS,
                   "triplet_modality": ("image", "image_text")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"CMLConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        if self.n_components < 1 or self.memory_bank_size < self.n_components or self.n_init < 1:
            raise ValueError("CMLConfig needs n_components >= 1, memory_bank_size >= n_components and n_init >= 1.")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "CMLConfig":
        if name not in CML_PRESETS:
            raise ValueError(f"unknown CXR-CML preset {name!r}; available: {sorted(CML_PRESETS)}.")
        unknown = sorted(set(overrides) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown CMLConfig fields {unknown}.")
        return cls(**{**CML_PRESETS[name], **overrides})


def batch_components(batch_size: int) -> int:
    """The official code's number of clusters for a batch of B: 2 if B < 10, min(5, B // 3) if B < 50, else
    min(40, B // 4) (so B = 32 gives 5)."""
    if batch_size < 10:
        return 2
    if batch_size < 50:
        return min(5, batch_size // 3)
    return min(40, batch_size // 4)


def official_pseudo_labels(image_embeds: torch.Tensor, config: CMLConfig, generator: torch.Generator) -> dict:
    """Soft pseudo-labels of the official code for one batch (B, D) -> {"labels": (B, K), "responsibilities",
    "saturated": fraction of clipped log-densities, "mixture"}. Runs in float64, as scikit-learn does."""
    z = F.normalize(image_embeds.detach().double(), dim=-1)
    k = min(batch_components(len(z)), len(z))
    gmm = fit_student_t_mixture(
        z.expand(config.n_init, -1, -1), k, nu=math.inf, covariance_type=config.covariance_type,
        covariance_floor=config.covariance_floor, init="kmeans++", max_iter=config.em_iterations, tol=config.tol,
        generator=generator,
    )
    best = int(gmm.log_likelihood[-1].argmax())
    mixture = StudentTMixture(gmm.weights[best : best + 1], gmm.means[best : best + 1],
                              gmm.covariances[best : best + 1], z.new_full((1,), config.nu), config.covariance_type)
    log_t = mixture.log_density(z)  # (B, K), Eq. 2 with the GMM's means and covariances and nu = 8
    clip = config.official_log_density_clip
    density = log_t.clamp(-clip, clip).exp()  # exp(700) ~ 1e304 still fits float64; beyond it they saturate
    weighted = density * mixture.weights[0]
    responsibilities = weighted / weighted.sum(-1, keepdim=True)
    soft = (responsibilities / config.official_temperature).softmax(-1)
    cluster_weights = 1 / torch.log1p(soft.sum(0))
    soft = soft * (cluster_weights / cluster_weights.sum())
    labels = soft / soft.sum(-1, keepdim=True)
    saturated = (log_t.abs() >= clip).double().mean()
    return {"labels": labels, "responsibilities": responsibilities, "saturated": saturated, "mixture": mixture}


def official_metric_loss(image_embeds, text_embeds, labels: torch.Tensor, distance_temp: float) -> torch.Tensor:
    """The official "weighted metric loss": a hinge on batch means, not per-anchor triplets.

    S = labels labels^T row-L1-normalised; a pair is positive when its row has exactly one entry of S above 0.5
    (then that entry; otherwise the row has no positive); negatives are all other pairs.
    D = ||img_i - txt_j||_2 exp(temp); loss = max(0, mean(D pos) - mean(D neg) + m), m = 0.3 (1 + exp(-mean(D pos))),
    means over all B^2 entries (masked zeros included), m not detached, as in their code."""
    similarity = labels @ labels.T
    similarity = similarity / similarity.sum(-1, keepdim=True).clamp(min=1e-12)
    binary = (similarity > 0.5).to(labels.dtype)
    binary = binary / binary.sum(-1, keepdim=True).clamp(min=1e-12)
    positive = (binary > 0.5).to(image_embeds.dtype)
    distances = torch.cdist(F.normalize(image_embeds, dim=-1), F.normalize(text_embeds, dim=-1)) * math.exp(distance_temp)
    mean_positive = (distances * positive).mean()
    margin = 0.3 * (1 + torch.exp(-mean_positive))
    return (mean_positive - (distances * (1 - positive)).mean() + margin).clamp(min=0)


class CMLMetricLoss:
    """L_m with its state (memory bank, current mixture, fit counter) for the gathered batch embeddings."""

    def __init__(self, config: CMLConfig):
        self.config = config
        self.bank: torch.Tensor | None = None
        self.mixture: StudentTMixture | None = None
        self.fits = 0
        self.last: dict = {}

    def _generator(self, device) -> torch.Generator:
        # one fresh stream per fit, from (seed, fit index): the same run refits identically, also after a resume
        self.fits += 1
        return torch.Generator(device="cpu").manual_seed(self.config.seed * 1_000_003 + self.fits)

    def fit(self, data: torch.Tensor, n_components: int) -> StudentTMixture:
        config = self.config
        fitted = fit_student_t_mixture(
            data.expand(config.n_init, -1, -1), n_components, nu=config.nu, estimate_nu=config.estimate_nu,
            covariance_type=config.covariance_type, covariance_floor=config.covariance_floor, init=config.init,
            max_iter=config.em_iterations, tol=config.tol, generator=self._generator(data.device),
        )
        best = int(fitted.log_likelihood[-1].argmax())
        keep = slice(best, best + 1)
        return StudentTMixture(fitted.weights[keep], fitted.means[keep], fitted.covariances[keep], fitted.nu[keep],
                               fitted.covariance_type, fitted.log_likelihood[:, keep], fitted.converged)

    def refit(self) -> None:
        """Refit the mixture on the memory bank (the epoch-start hook of ``fit_on="epoch"``)."""
        if self.bank is not None and len(self.bank) >= self.config.n_components:
            self.mixture = self.fit(self.bank, self.config.n_components)
            logger.info("CXR-CML: refit the t-mixture on %d bank embeddings, log-likelihood %.4f",
                        len(self.bank), self.mixture.log_likelihood[-1, 0].item())

    def __call__(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """L_m of a global batch; ``image_embeds``/``text_embeds`` (B, D) gathered with gradients."""
        config = self.config
        if config.procedure == "official":
            out = official_pseudo_labels(image_embeds, config, self._generator(image_embeds.device))
            self.last = out
            return official_metric_loss(image_embeds, text_embeds, out["labels"].to(image_embeds.dtype),
                                        config.official_distance_temp)
        z = F.normalize(image_embeds.detach(), dim=-1)
        if config.fit_on == "batch":
            self.mixture = self.fit(z, min(config.n_components, batch_components(len(z))))
        else:
            self.bank = z if self.bank is None else torch.cat([self.bank, z])[-config.memory_bank_size :]
            if self.mixture is None and len(self.bank) >= (config.min_fit_size or 4 * config.n_components):
                self.refit()
        if self.mixture is None:  # the bank is still filling: no pseudo-labels yet
            self.last = {}
            return image_embeds.sum() * 0
        responsibilities = self.mixture.responsibilities(z.to(self.mixture.means.dtype))  # (B, K)
        labels = responsibilities if config.soft_labels else responsibilities.argmax(-1)
        self.last = {"labels": labels, "responsibilities": responsibilities}
        candidates = F.normalize(text_embeds, dim=-1) if config.triplet_modality == "image_text" else None
        return triplet_loss(F.normalize(image_embeds, dim=-1), labels, config.margin, config.mining,
                            candidates=candidates)

    def state_dict(self) -> dict:
        mixture = None if self.mixture is None else {
            name: getattr(self.mixture, name) for name in ("weights", "means", "covariances", "nu")}
        return {"bank": self.bank, "mixture": mixture, "fits": self.fits}

    def load_state_dict(self, state: dict) -> None:
        self.bank, self.fits = state["bank"], state["fits"]
        mixture = state["mixture"]
        self.mixture = None if mixture is None else StudentTMixture(covariance_type=self.config.covariance_type, **mixture)


class CMLObjective(Objective):
    """L = L_c + weight * L_m (Eq. 4) for `TrainingLoop`.

    ``contrastive(model, batch) -> (terms, image_embeds, text_embeds)`` is the recipe's contrastive step: its named
    loss terms and the embeddings it used, gathered across processes with gradients. ``plateau`` (factor, patience)
    steps a ReduceLROnPlateau on the mean training loss of each finished epoch (the paper's scheduler; the loop has
    no validation loss, which the official code used)."""

    def __init__(self, config: CMLConfig, contrastive: Callable, plateau: tuple[float, int] | None = None):
        self.config, self.contrastive, self.plateau_settings = config, contrastive, plateau
        self.metric = CMLMetricLoss(config)
        self.plateau = None
        self.epoch_loss = torch.zeros(2, dtype=torch.float64)  # (sum, count) of the running epoch, for the plateau

    def on_train_start(self, loop) -> None:
        if self.plateau_settings is not None:
            factor, patience = self.plateau_settings
            optimizer = getattr(loop.optimizer, "optimizer", loop.optimizer)
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=factor,
                                                                      patience=patience)

    def on_epoch_start(self, loop, epoch: int) -> None:
        if self.plateau is not None and epoch > 0:
            total = loop.accelerator.reduce(self.epoch_loss.to(loop.accelerator.device), reduction="sum").cpu()
            if total[1] > 0:
                self.plateau.step(float(total[0] / total[1]))
                logger.info("CXR-CML: epoch %d mean training loss %.5f, lr %s", epoch - 1, float(total[0] / total[1]),
                            [group["lr"] for group in self.plateau.optimizer.param_groups])
        self.epoch_loss = torch.zeros_like(self.epoch_loss)
        if self.config.procedure == "paper" and self.config.fit_on == "epoch":
            self.metric.refit()

    def compute_loss(self, model, batch) -> dict[str, torch.Tensor]:
        terms, image_embeds, text_embeds = self.contrastive(model, batch)
        terms = dict(terms)
        terms["metric_loss"] = self.config.weight * self.metric(image_embeds, text_embeds)
        if self.plateau is not None:  # summed on the device: no host sync per step
            total = sum(terms.values()).detach().double()
            self.epoch_loss = self.epoch_loss.to(total.device) + torch.stack([total, torch.ones_like(total)])
        return terms

    def state_dict(self) -> dict:
        return {"metric": self.metric.state_dict(), "epoch_loss": self.epoch_loss,
                "plateau": None if self.plateau is None else self.plateau.state_dict(), "config": asdict(self.config)}

    def load_state_dict(self, state: dict) -> None:
        self.metric.load_state_dict(state["metric"])
        self.epoch_loss = state["epoch_loss"].double()
        if self.plateau is not None and state["plateau"] is not None:
            self.plateau.load_state_dict(state["plateau"])


@dataclass(kw_only=True)
class CMLArguments:
    """Recipe fields of ``--objective cml`` (a mixin of the fine-tuning recipe's arguments)."""

    cml_preset: str = field(default="paper", metadata={"help": "paper | official (CXR-CML L_m procedure)"})
    cml_fit_on: str | None = field(default=None, metadata={"help": "epoch | batch (None: the preset's)"})
    cml_n_components: int | None = field(default=None, metadata={"help": "K (None: the preset's)"})
    cml_memory_bank_size: int | None = None
    cml_soft_labels: bool | None = None
    cml_mining: str | None = None
    cml_margin: float | None = None
    cml_triplet_modality: str | None = None
    cml_plateau_patience: int | None = field(default=None, metadata={"help": "ReduceLROnPlateau patience (epochs); None: off"})
    cml_plateau_factor: float = 0.1
    meta_label_text: bool = field(default=False, metadata={"help": "CXR-CML meta labels: captions 'x is present, y is present' from the labels instead of report text"})

    def __post_init__(self):
        if hasattr(super(), "__post_init__"):  # the recipe's TrainingArguments checks come first
            super().__post_init__()
        if self.cml_preset not in CML_PRESETS:
            raise ValueError(f"cml_preset must be one of {sorted(CML_PRESETS)}, got {self.cml_preset!r}.")

    def cml_config(self, seed: int) -> CMLConfig:
        overrides = {name[4:]: getattr(self, name) for name in (
            "cml_fit_on", "cml_n_components", "cml_memory_bank_size", "cml_soft_labels", "cml_mining", "cml_margin",
            "cml_triplet_modality") if getattr(self, name) is not None}
        return CMLConfig.from_preset(self.cml_preset, seed=seed, **overrides)


__all__ = ["CML_PRESETS", "CMLArguments", "CMLConfig", "CMLMetricLoss", "CMLObjective", "batch_components",
           "official_metric_loss", "official_pseudo_labels"]
