"""REStore: backdoor diagnosis, trigger recovery and input purification by importance splitting ([REStore]).

Spec: [REStore] Sec. III-IV, App. F-H and docs/implementation.md#restore. The engine is
`workbench.defenses.importance_splitting`; this module supplies what REStore plugs into it and what it does with
the output:

* Setups (Sec. IV-B, App. G-H): PI (sparse uniform pixel replacement, Eq. 17), FI (sparse Laplacian replacement of
  DCT coefficients, the highest third of the frequencies excluded and the lowest 5 % frozen), PG (a Gaussian latent
  blended in through Eq. 18); optionally a greyscale search space (Sec. IV-G4).
* Scorer (Eq. 4): one perturbation is applied to a small clean set X_test^cl of images not classified as the class c
  under test (one per other class, at most 9; Sec. III-D1) and scored by the mean logit or probit of c, or by the
  number of labels flipped to c, through the black-box `QueryModel` at that access level.
* alpha_def (App. G): the sparsity ratio (PI, FI) or blending amplitude (PG) at which random draws of the setup
  halve the clean accuracy, found by bisection on clean images.
* Diagnosis (Sec. III-D2, IV-D): importance splitting per class gives the tau -> rho map of each class; the class
  whose map lies highest at high tau is the suspect, and its lead over the runner-up (in log10 rho, read at the
  runner-up's highest common level) is the margin (`compare_maps`).
* Recovery (Sec. IV-E): the k realisations above the last level are candidate triggers; their ASR is measured on
  clean test images of the other classes.
* Purification (Sec. III-D3, IV-F, IV-G5/6): subtract the SNR-weighted mean perturbation, mask pixels by the inverse
  SNR, or remove the component along the weighted mean perturbation (Gram-Schmidt), optionally low-passing the SNR;
  the strength is the largest that keeps the clean accuracy within a stated drop.

Not published, so chosen here and named in each docstring: the SNR (per pixel, over the realisations' mean effect on
the clean set: |mean| / std), the Laplace scales of FI (mean |coefficient| of the clean set), the frequency order
of FI (u + v), the SNR into weights (the Wiener gain SNR^2 / (1 + SNR^2)) and the strength grid.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from workbench.core.query import QueryModel
from workbench.core.runtime import make_generator
from workbench.core.validation import (
    WorkbenchError,
    check_class,
    check_fraction,
    check_images,
    check_labels,
    check_name,
    check_positive_int,
    check_tensor,
)
from workbench.defenses.importance_splitting import (
    GaussianPrior,
    SparseIIDPrior,
    SplittingConfig,
    SplittingResult,
    decay_to_one_component,
    importance_splitting,
)

SETUPS = ("PI", "FI", "PG")
#: scorer outputs (Eq. 4) and the `QueryModel` access level each needs
OUTPUTS = {"logits": "logits", "probits": "probs", "labels": "label"}
TRANSFORMS = ("subtract", "mask", "gram_schmidt")
#: FI search space (Sec. IV-B, App. G): the highest third of the frequencies is excluded, the lowest 5 % frozen
FI_EXCLUDED_HIGH, FI_FROZEN_LOW = 1 / 3, 0.05


# --- DCT (FI) -----------------------------------------------------------------------------------------------------

def dct_matrix(n: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """The orthonormal DCT-II matrix D (n, n): X = D x D^T is the 2-D DCT of an n x n block, x = D^T X D."""
    check_positive_int(n, "n")
    k = torch.arange(n, device=device, dtype=torch.float64)[:, None]
    i = torch.arange(n, device=device, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2 / n)
    d[0] /= math.sqrt(2)
    return d.float()


def _check_planes(x: torch.Tensor) -> None:
    """A finite float tensor of planes (..., H, W): any leading dimensions."""
    check_tensor(x, "x")
    if x.ndim < 2:
        raise WorkbenchError(f"x must hold planes (..., H, W), got shape {tuple(x.shape)}")


def dct2(x: torch.Tensor) -> torch.Tensor:
    """2-D orthonormal DCT over the last two dimensions of x (..., H, W)."""
    _check_planes(x)
    dh, dw = dct_matrix(x.shape[-2], x.device), dct_matrix(x.shape[-1], x.device)
    return dh @ x @ dw.T


def idct2(x: torch.Tensor) -> torch.Tensor:
    """Inverse of `dct2`."""
    _check_planes(x)
    dh, dw = dct_matrix(x.shape[-2], x.device), dct_matrix(x.shape[-1], x.device)
    return dh.T @ x @ dw


def frequency_rank(height: int, width: int) -> torch.Tensor:
    """(H, W) rank of each DCT coefficient from the lowest frequency (0) to the highest (1), ordered by u + v and then
    by u (the zig-zag diagonals; the paper does not say which order it uses)."""
    check_positive_int(height, "height")
    check_positive_int(width, "width")
    u = torch.arange(height)[:, None].expand(height, width)
    v = torch.arange(width)[None, :].expand(height, width)
    order = torch.argsort(((u + v) * height + u).flatten())
    rank = torch.empty(height * width)
    rank[order] = torch.arange(height * width, dtype=torch.float32)
    return (rank / max(height * width - 1, 1)).reshape(height, width)


# --- Setups (App. G-H) ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RestoreSetup:
    """One importance-splitting setup of REStore: search distribution, kernel and perturbation function g.

    Args:
        name: "PI" (Eq. 17), "FI" (DCT replacement) or "PG" (Eq. 18).
        alpha: alpha_def: the fraction of components replaced (PI, FI) or the amplitude lambda of Eq. 18 (PG);
            see `calibrate_alpha` for the paper's choice.
        greyscale: search one channel and apply it to every channel (Sec. IV-G4).
    """

    name: str
    alpha: float
    greyscale: bool = False

    def __post_init__(self) -> None:
        check_name("setup", self.name, SETUPS)
        check_fraction(self.alpha, "alpha")

    def search_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        channels, height, width = image_shape
        return (1 if self.greyscale else channels, height, width)

    def prior(self, clean: torch.Tensor) -> GaussianPrior | SparseIIDPrior:
        """The search distribution L over perturbations for images like `clean` (N, C, H, W) (App. G)."""
        shape = self.search_shape(tuple(clean.shape[1:]))
        if self.name == "PG":
            return GaussianPrior(shape, clean.device)
        if self.name == "PI":
            return SparseIIDPrior(torch.full(shape, self.alpha, device=clean.device), _uniform_values(clean.device))
        searched = frequency_rank(*shape[1:]).to(clean.device)
        searched = (searched >= FI_FROZEN_LOW) & (searched < 1 - FI_EXCLUDED_HIGH)
        rate = (self.alpha * searched).expand(shape).contiguous()
        coefficients = dct2(clean.mean(dim=1, keepdim=True) if self.greyscale else clean)
        scale = coefficients.abs().mean(dim=0).clamp_min(1e-6)  # Laplace MLE scale per coefficient (location 0)
        return SparseIIDPrior(rate, _laplace_values(scale))

    def perturb(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """g(x, Delta): every image with every perturbation.

        Args:
            x: (..., M, C, H, W) images in [0, 1].
            delta: (..., P, C', H, W) perturbations (C' = 1 for a greyscale search), the leading dimensions matching
                x's.

        Returns:
            (..., P, M, C, H, W) perturbed images in [0, 1].
        """
        x = x.unsqueeze(-5)
        delta = delta.unsqueeze(-4)
        if self.name == "PI":  # Eq. 17: replace the pixels Delta draws
            return torch.where(torch.isnan(delta), x, delta)
        if self.name == "PG":  # Eq. 18
            return (x + 2 * self.alpha * (torch.special.ndtr(delta) - 0.5)).clamp(0, 1)
        coefficients = dct2(x)
        return idct2(torch.where(torch.isnan(delta), coefficients, delta)).clamp(0, 1)


def _uniform_values(device: torch.device):
    def draw(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        return torch.rand(shape, generator=generator, device=device)
    return draw


def _laplace_values(scale: torch.Tensor):
    def draw(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        u = torch.rand(shape, generator=generator, device=scale.device) - 0.5
        return -scale * torch.sign(u) * torch.log1p(-2 * u.abs().clamp(max=0.5 - 1e-7))
    return draw


def splitting_config(setup: RestoreSetup, image_shape: tuple[int, int, int], **settings: Any) -> SplittingConfig:
    """The paper's IS settings (n = 500, k = 250, T = 30, J_max = 40, s = 1) for a setup, `settings` overriding any.

    For the sparse setups the strength is a probability (at most 1) and the decay is the paper's: after T decays
    the kernel redraws a single component (Sec. IV-B). PG has no such rule; it keeps the engine's default decay.
    """
    settings = {"particles": 500, "survivors": 250, "passes": 30, "max_levels": 40, "strength": 1.0, **settings}
    SplittingConfig(**settings)  # checks every setting before the decay below computes with them
    if setup.name in ("PI", "FI"):
        components = setup.alpha * math.prod(setup.search_shape(image_shape))
        settings.setdefault("max_strength", 1.0)
        if "decay" not in settings and settings["strength"] * components > 1:
            settings["decay"] = decay_to_one_component(settings["passes"], settings["strength"], components)
    return SplittingConfig(**settings)


# --- Scorer (Eq. 4) and the clean sets it uses (Sec. III-D1) -------------------------------------------------------

#: |X_test^cl|, the clean images per class under test: [REStore] Sec. III-D1 takes min(K - 1, 9).
PAPER_PER_SET = 9


def clean_sets(query: QueryModel, images: torch.Tensor, labels: torch.Tensor, classes: list[int], *,
               per_set: int = PAPER_PER_SET, seed: int = 0) -> torch.Tensor:
    """X_test^cl for each class c under test (Sec. III-D1): correctly classified clean images of the other classes,
    one per class in a seeded order until `per_set` (the paper: min(K - 1, 9)).

    Args:
        query: the suspicious model (its labels are queried once per image).
        images: (N, C, H, W) the defender's clean, labelled images; labels: (N,).
        classes: the classes c to test.

    Returns:
        (len(classes), per_set, C, H, W).
    """
    _check_clean_set(query, images, labels)
    check_positive_int(per_set, "per_set")
    for c in classes:
        check_class(c, query.num_classes_for(images), "classes (each a class under test)")
    pick = _round_robin(query, images, labels, seed)
    return torch.stack([images[pick(per_set, exclude=c)] for c in classes])


def _round_robin(query: QueryModel, images: torch.Tensor, labels: torch.Tensor, seed: int):
    """pick(count, exclude) -> indices of `count` correctly classified images, one per class (but `exclude`) in turn,
    in a seeded order."""
    check_images(images, name="clean images")
    predicted = query.labels(images).to(labels.device)
    correct = predicted == labels
    order = torch.randperm(len(labels), generator=make_generator(seed))
    num_classes = query.num_classes

    def pick(count: int, exclude: int | None = None) -> torch.Tensor:
        # round robin over the classes
        pools = [order[(labels[order] == other) & correct[order]] for other in range(num_classes) if other != exclude]
        chosen = [pool[rank] for rank in range(max((len(pool) for pool in pools), default=0))
                  for pool in pools if rank < len(pool)][:count]
        if len(chosen) < count:
            others = "" if exclude is None else f" other than {exclude}"
            raise WorkbenchError(f"only {len(chosen)} correctly classified images of classes{others} for a clean set "
                                 f"of {count}; pass more clean images")
        return torch.stack(chosen)

    return pick


def class_scorer(query: QueryModel, setup: RestoreSetup, output: str, sets: torch.Tensor, classes: torch.Tensor):
    """Eq. 4 for every problem b: the mean output of class classes[b] over sets[b] perturbed by Delta (logits,
    probits), or the number of those images labelled classes[b] (labels)."""
    check_name("scorer output", output, OUTPUTS)
    if not isinstance(sets, torch.Tensor) or sets.ndim != 5:
        raise WorkbenchError(f"sets must have shape (B, M, C, H, W) (a clean set per problem), got "
                             f"{tuple(getattr(sets, 'shape', ()))}")
    _check_query_images(query, sets.flatten(0, 1), "sets")
    check_labels(classes, len(sets), query.num_classes_for(sets[0]), name="classes")
    read = {"logits": query.logits, "probits": query.probs, "labels": query.labels}[output]

    def score(delta: torch.Tensor, problems: torch.Tensor) -> torch.Tensor:
        images = setup.perturb(sets[problems], delta)  # (B, P, M, C, H, W)
        b, p, m = images.shape[:3]
        out = read(images.flatten(0, 2))
        target = classes[problems].to(out.device)
        if output == "labels":
            return (out.reshape(b, p, m) == target[:, None, None]).sum(dim=2).float()
        return out.reshape(b, p, m, -1).gather(3, target[:, None, None, None].expand(b, p, m, 1)).squeeze(3).mean(2)

    return score


def any_class_scorer(query: QueryModel, setup: RestoreSetup, output: str, images: torch.Tensor,
                     labels: torch.Tensor, num_classes: int):
    """The scorer "maximizing a score over all classes at once" (Sec. VI, App. J Fig. 12b), one problem: for each
    class c, Eq. 4's score of c over the images not of class c, and the largest of them. A trigger of any class
    scores high; one run replaces the K per-class runs. `images` (M, C, H, W) with `labels` (M,); `num_classes` is
    the model's output count (the images need not cover every class)."""
    check_name("scorer output", output, OUTPUTS)
    _check_query_images(query, images, "images")
    if len(images) == 0:
        raise WorkbenchError("images are empty: the scorer perturbs at least one clean image")
    check_labels(labels, len(images), check_positive_int(num_classes, "num_classes"))
    read = {"logits": query.logits, "probits": query.probs, "labels": query.labels}[output]
    others = (labels[:, None] != torch.arange(num_classes, device=labels.device)).float()  # (M, K): y_i != c
    weights = others if output == "labels" else others / others.sum(dim=0)  # counts, or means over the others

    def score(delta: torch.Tensor, problems: torch.Tensor) -> torch.Tensor:
        perturbed = setup.perturb(images[None].expand(len(problems), *images.shape), delta)  # (B, P, M, C, H, W)
        b, p, m = perturbed.shape[:3]
        out = read(perturbed.flatten(0, 2))
        if output == "labels":
            out = F.one_hot(out.long(), num_classes).float()
        per_class = torch.einsum("bpmk,mk->bpk", out.reshape(b, p, m, -1).float(), weights.to(out.device))
        return per_class.amax(dim=2)

    return score


def recover_any_class(query: QueryModel, images: torch.Tensor, labels: torch.Tensor, setup: RestoreSetup, *,
                      num_classes: int, output: str = "probits", config: SplittingConfig | None = None,
                      per_class: int = 1, seed: int = 0, progress: bool = False) -> tuple[SplittingResult, int]:
    """Importance splitting with `any_class_scorer` on `per_class` correctly classified clean images of every class
    (Fig. 12b): one run for all classes. Returns the run and the class its surviving perturbations send most of the
    clean images to (the class whose trigger was recovered)."""
    check_positive_int(per_class, "per_class")
    check_positive_int(num_classes, "num_classes")
    check_name("scorer output", output, OUTPUTS)
    _check_clean_set(query, images, labels)
    present = len(labels.unique())
    index = _round_robin(query, images, labels, seed)(per_class * present)
    chosen, chosen_labels = images[index], labels[index]
    config = config or splitting_config(setup, tuple(images.shape[1:]))
    prior = setup.prior(images)
    result = importance_splitting(prior.generate, prior.kernel,
                                  any_class_scorer(query, setup, output, chosen, chosen_labels, num_classes),
                                  num_problems=1,
                                  config=config, seed=seed, device=images.device, progress=progress)
    survivors = result.realisations(0)
    if len(survivors) == 0:
        raise WorkbenchError("the splitting run ended without survivors: no perturbation to attribute to a class")
    perturbed = setup.perturb(chosen[None], survivors[None].to(chosen.device))[0]  # (P, M, C, H, W)
    votes = torch.bincount(query.labels(perturbed.flatten(0, 1)).cpu(), minlength=num_classes)
    return result, int(votes.argmax())


# --- alpha_def (App. G) ---------------------------------------------------------------------------------------------

def calibrate_alpha(query: QueryModel, setup_name: str, images: torch.Tensor, labels: torch.Tensor, *,
                    greyscale: bool = False, steps: int = 12, seed: int = 0) -> tuple[float, list[tuple[float, float]]]:
    """alpha_def: the ratio at which one random draw of the setup per image halves the clean accuracy (App. G);
    1 (with a warning) when even ratio 1 does not halve it.

    Bisection on [0, 1] (PI, FI: sparsity of uniform / Laplacian replacements; PG: the amplitude of Eq. 18), each
    accuracy measured with the same seeded draws. Returns alpha_def and every (alpha, accuracy) evaluated.
    """
    check_name("setup", setup_name, SETUPS)
    check_positive_int(steps, "steps")
    _check_clean_set(query, images, labels)
    baseline = _accuracy(query, images, labels)
    probes = [(0.0, baseline)]

    def accuracy(alpha: float) -> float:
        setup = RestoreSetup(setup_name, alpha, greyscale)
        gen = make_generator(seed, images.device)
        delta = setup.prior(images).generate(1, len(images), gen)[0]  # one draw per image
        perturbed = setup.perturb(images[:, None], delta[:, None])[:, 0, 0]
        value = _accuracy(query, perturbed, labels)
        probes.append((alpha, value))
        return value

    low, high = 0.0, 1.0
    if accuracy(high) > baseline / 2:  # e.g. FI on MNIST: the allowed frequencies alone cannot halve it
        warnings.warn(f"{setup_name} at ratio 1 keeps accuracy {probes[-1][1]:.2f} above half the clean accuracy "
                      f"{baseline:.2f}: no ratio halves it, so alpha_def = 1 (the strongest this setup allows)",
                      stacklevel=2)
        return 1.0, sorted(probes)
    for _ in range(steps):
        middle = (low + high) / 2
        low, high = (middle, high) if accuracy(middle) > baseline / 2 else (low, middle)
    return (low + high) / 2, sorted(probes)


def _accuracy(query: QueryModel, images: torch.Tensor, labels: torch.Tensor) -> float:
    return (query.labels(images).to(labels.device) == labels).float().mean().item()


def _check_clean_set(query: QueryModel, images: torch.Tensor, labels: torch.Tensor) -> None:
    """The defender's clean set: a non-empty image batch the model accepts, one label per image, in range."""
    if not isinstance(query, QueryModel):
        raise WorkbenchError(f"query must be a QueryModel (query access to the classifier), got {type(query).__name__}")
    _check_query_images(query, images, "clean images")
    if len(images) == 0:
        raise WorkbenchError("clean images are empty: pass at least one labelled clean image")
    check_labels(labels, len(images), query.num_classes_for(images))


def _check_query_images(query: QueryModel, images: torch.Tensor, name: str) -> None:
    """Images (N, C, H, W) in [0, 1] of the shape the queried model takes, where it declares one."""
    shape = query.input_shape
    check_images(images, channels=shape[0] if shape else None, size=tuple(shape[1:]) if shape else None, name=name)


# --- Diagnosis and recovery (Sec. III-D2, IV-D, IV-E) ----------------------------------------------------------------

@dataclass
class Diagnosis:
    """Importance splitting run on every class of one model: the tau -> rho maps and the suspect class."""

    setup: RestoreSetup
    output: str
    classes: list[int]
    splitting: SplittingResult  # problem b is class classes[b]
    comparison_level: float  # the runner-up's level at the smallest probability every map reached (`compare_maps`)
    log10_rho_at_level: list[float]  # per class, log10 rho at comparison_level (empty when only one class was run)
    suspect: int | None  # the class whose map lies highest there (None when only one class was run)
    margin: float  # its lead over the runner-up, in log10 rho (NaN when only one class was run)
    queries: int
    extra: dict[str, Any] = field(default_factory=dict)

    def realisations(self, cls: int) -> torch.Tensor:
        """The perturbations above class `cls`'s last level (its recovered trigger candidates)."""
        return self.splitting.realisations(self.classes.index(cls))

    def summary(self) -> dict[str, Any]:
        """Everything but the particles, JSON-ready; with `splitting.tensors()` it rebuilds the diagnosis."""
        return {"setup": asdict(self.setup), "output": self.output, "classes": self.classes,
                "comparison_level": None if math.isnan(self.comparison_level) else self.comparison_level,
                "log10_rho_at_level": [None if math.isinf(v) else v for v in self.log10_rho_at_level],
                "suspect": self.suspect, "margin": None if math.isnan(self.margin) else self.margin,
                "queries": self.queries,
                "splitting": self.splitting.summary(), "extra": self.extra}

    @classmethod
    def from_stored(cls, tensors: dict[str, torch.Tensor], summary: dict[str, Any]) -> Diagnosis:
        """Rebuild a diagnosis from `splitting.tensors()` and `summary()`."""
        return cls(setup=RestoreSetup(**summary["setup"]), output=summary["output"], classes=list(summary["classes"]),
                   splitting=SplittingResult.from_tensors(tensors, summary["splitting"]),
                   comparison_level=_nan_if_none(summary["comparison_level"]),
                   log10_rho_at_level=[-math.inf if v is None else v for v in summary["log10_rho_at_level"]],
                   suspect=summary["suspect"], margin=_nan_if_none(summary["margin"]), queries=summary["queries"],
                   extra=dict(summary["extra"]))


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else value


def diagnose(query: QueryModel, images: torch.Tensor, labels: torch.Tensor, setup: RestoreSetup, *,
             output: str = "probits", classes: list[int] | None = None, config: SplittingConfig | None = None,
             per_set: int = PAPER_PER_SET, num_classes: int | None = None, seed: int = 0,
             progress: bool = False) -> Diagnosis:
    """Run importance splitting for every class (Sec. IV-D): one problem per class, all batched.

    With a single class in `classes` the run only recovers that class's trigger (Table II): the comparison fields
    are NaN and `suspect` is None.

    Args:
        query: the suspicious model at the access level `output` needs.
        images, labels: the defender's clean labelled images (D_test^cl), (N, C, H, W) and (N,).
        setup: PI, FI or PG with its alpha_def.
        output: "logits", "probits" or "labels" (Eq. 4).
        classes: the classes to test (default all).
        config: IS settings (default `splitting_config(setup, ...)`, the paper's).
        per_set: |X_test^cl|.
        num_classes: the model's class count (default `query.num_classes`: from the model, never from the labels).
        seed: seeds the clean sets and the splitting.
    """
    check_name("scorer output", output, OUTPUTS)
    num_classes = query.num_classes if num_classes is None else check_positive_int(num_classes, "num_classes")
    _check_clean_set(query, images, labels)
    check_labels(labels, len(images), num_classes)
    check_positive_int(per_set, "per_set")
    classes = list(range(num_classes)) if classes is None else [check_class(c, num_classes) for c in classes]
    if not classes:
        raise WorkbenchError("no classes to test: pass None for every class or a list of class indices")
    before = query.queries
    sets = clean_sets(query, images, labels, classes, per_set=per_set, seed=seed)
    config = config or splitting_config(setup, tuple(images.shape[1:]))
    prior = setup.prior(images)
    targets = torch.tensor(classes)
    result = importance_splitting(prior.generate, prior.kernel, class_scorer(query, setup, output, sets, targets),
                                  num_problems=len(classes), config=config, seed=seed, device=images.device,
                                  progress=progress)
    if len(classes) == 1:  # trigger recovery only (Table II): nothing to compare
        return Diagnosis(setup=setup, output=output, classes=classes, splitting=result, comparison_level=math.nan,
                         log10_rho_at_level=[], suspect=None, margin=math.nan, queries=query.queries - before)
    level, at_level, ranked = compare_maps([result.curve(b) for b in range(len(classes))])
    return Diagnosis(setup=setup, output=output, classes=classes, splitting=result, comparison_level=level,
                     log10_rho_at_level=at_level, suspect=classes[ranked[0]],
                     margin=at_level[ranked[0]] - at_level[ranked[1]], queries=query.queries - before)


def compare_maps(curves: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, list[float], list[int]]:
    """Which tau -> log10 rho map lies highest at high tau (Sec. III-D2, Fig. 3), and by how much.

    Every map is followed down to the smallest probability all of them reached (rho*); the map that gets there at
    the highest level tau is the suspect (a map further right at equal rho lies above the others). The comparison
    level is the runner-up's tau at rho*, where the suspect's map still has estimates; each map is read there (maps
    that end below it are held at their last value, an upper bound).

    Returns:
        (comparison level, log10 rho of every map at it, map indices from the suspect down).
    """
    if len(curves) < 2:
        raise WorkbenchError(f"curves must hold at least 2 maps to compare, got {len(curves)}")
    finite = [(levels.double().numpy(), rho.double().numpy()) for levels, rho in curves]
    rarity = max((rho[-1] for _, rho in finite if len(rho)), default=0.0)
    reached = [np.interp(rarity, rho[::-1], levels[::-1]) if len(rho) else -np.inf for levels, rho in finite]
    ranked = sorted(range(len(curves)), key=lambda b: reached[b], reverse=True)
    level = float(reached[ranked[1]])
    at_level = [float(np.interp(level, levels, rho)) if len(rho) else -math.inf for levels, rho in finite]
    return level, at_level, ranked


def recovered_asr(query: QueryModel, setup: RestoreSetup, realisations: torch.Tensor, images: torch.Tensor,
                  labels: torch.Tensor, target: int, *, seed: int = 0) -> float:
    """ASR of recovered perturbations (Sec. IV-E, Table II): each clean test image not of class `target` gets one
    realisation drawn at random and g applied; the fraction then labelled `target`. This estimates the mean ASR of
    a single recovered perturbation."""
    if len(realisations) == 0:
        raise WorkbenchError("no realisations to test: the splitting run ended without survivors")
    _check_clean_set(query, images, labels)
    check_class(target, query.num_classes_for(images), "target")
    _check_realisations(realisations, images, "images")
    keep = labels != target
    x = images[keep]
    gen = make_generator(seed)
    pick = torch.randint(len(realisations), (len(x),), generator=gen)
    perturbed = setup.perturb(x[:, None], realisations[pick][:, None].to(x.device))[:, 0, 0]
    return (query.labels(perturbed) == target).float().mean().item()


# --- Purification (Sec. III-D3, IV-F, IV-G5/6) -------------------------------------------------------------------

@dataclass
class TriggerEstimate:
    """The recovered trigger as an additive effect on images: mean and SNR over the realisations.

    effect_r = mean over the clean set of g(x, Delta_r) - x, per pixel; mean = mean_r effect_r; SNR = |mean| / std_r
    (the workbench's definition; the paper does not give one). (C, H, W) each.
    """

    mean: torch.Tensor
    snr: torch.Tensor

    def weights(self, low_pass: bool = False) -> torch.Tensor:
        """Per-pixel weights in [0, 1): the Wiener gain SNR^2 / (1 + SNR^2) of the SNR, optionally blurred first by a
        3x3 Gaussian (Sec. IV-G6). Components where the realisations agree (a trigger: SNR >> 1) get weight ~1,
        the random replacements elsewhere (SNR ~ 0.3-1) little. (Scaling by the maximum SNR, the first choice here,
        let one near-constant component with SNR ~ 1e5 push every other trigger component to ~0.)"""
        snr = self.snr
        if low_pass:
            kernel = torch.tensor([1.0, 2.0, 1.0], device=snr.device)
            kernel = (kernel[:, None] * kernel[None, :] / 16).expand(snr.shape[0], 1, 3, 3)
            snr = F.conv2d(snr[None], kernel, padding=1, groups=snr.shape[0])[0]
        return snr.square() / (1 + snr.square())

    def strongest_window(self, size: int) -> tuple[int, int]:
        """(row, col) of the top-left pixel of the size x size window with the largest summed weight: where the
        recovered trigger sits, to compare with where a patch was planted."""
        summed = F.avg_pool2d(self.weights().amax(dim=0)[None, None], size, stride=1)[0, 0]
        row, col = divmod(int(summed.argmax()), summed.shape[1])
        return row, col


def _check_realisations(realisations: torch.Tensor, images: torch.Tensor, name: str) -> None:
    """Realisations (R, C', H, W) of the size of the images (argument `name`), with their channels or one (a
    greyscale search)."""
    if (not isinstance(realisations, torch.Tensor) or realisations.ndim != 4
            or realisations.shape[2:] != images.shape[2:] or realisations.shape[1] not in (1, images.shape[1])):
        raise WorkbenchError(f"realisations must have shape (R, {images.shape[1]} or 1, {images.shape[2]}, "
                             f"{images.shape[3]}) for {name} of shape {tuple(images.shape)}, got "
                             f"{tuple(getattr(realisations, 'shape', ()))}")


def estimate_trigger(setup: RestoreSetup, realisations: torch.Tensor, clean: torch.Tensor) -> TriggerEstimate:
    """Mean and SNR of the realisations' effect on clean images (N, C, H, W) (see `TriggerEstimate`)."""
    check_images(clean, name="clean images")
    if len(clean) == 0:
        raise WorkbenchError("clean images are empty: the trigger's effect is measured on them")
    _check_realisations(realisations, clean, "clean images")
    if len(realisations) < 2:
        raise WorkbenchError(f"an SNR needs at least 2 realisations, got {len(realisations)}")
    effects = (setup.perturb(clean[None], realisations[None].to(clean.device))[0] - clean[None]).mean(dim=1)
    mean, std = effects.mean(dim=0), effects.std(dim=0)
    return TriggerEstimate(mean=mean, snr=mean.abs() / std.clamp_min(1e-6))


@dataclass(frozen=True)
class Purifier:
    """A REStore purification: an element-wise transform of the input, as cheap as the classifier's input pipeline.

    subtract: x - strength * w * mean; mask: x * (1 - strength * w); gram_schmidt: x minus its component along
    t = w * mean (Sec. IV-G5), scaled by strength. w = `TriggerEstimate.weights`. Results are clipped to [0, 1].
    """

    transform: str
    strength: float
    weights: torch.Tensor  # (C, H, W)
    mean: torch.Tensor  # (C, H, W)

    def __post_init__(self) -> None:
        check_name("purification", self.transform, TRANSFORMS)
        check_fraction(self.strength, "strength", allow_zero=True)
        for name in ("weights", "mean"):
            check_tensor(getattr(self, name), name, ndim=3)
        if self.mean.shape != self.weights.shape:
            raise WorkbenchError(f"mean {tuple(self.mean.shape)} and weights {tuple(self.weights.shape)} must have "
                                 "the same (C, H, W) shape")

    @cached_property
    def _operand(self) -> torch.Tensor:
        """What the transform applies to every input, computed once: the shift, the mask factor or t."""
        if self.transform == "subtract":
            return self.strength * self.weights * self.mean
        if self.transform == "mask":
            return 1 - self.strength * self.weights
        return self.weights * self.mean

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, channels=self.weights.shape[0], size=tuple(self.weights.shape[1:]))
        # one element-wise pass and an in-place clip: the test-time cost Table IV measures
        operand = self._operand.to(x.device)
        if self.transform == "subtract":
            out = x - operand
        elif self.transform == "mask":
            out = x * operand
        else:
            t = operand.flatten()
            along = (x.flatten(1) @ t) / t.dot(t).clamp_min(1e-12)
            out = x - self.strength * along[:, None, None, None] * operand
        return out.clamp_(0, 1)


@dataclass(frozen=True)
class StrengthTrial:
    """One purifier strength `select_purifier` tried and the clean accuracy (fraction) it kept."""

    strength: float
    accuracy: float


def select_purifier(query: QueryModel, estimate: TriggerEstimate, images: torch.Tensor, labels: torch.Tensor, *,
                    transform: str = "subtract", low_pass: bool = False, max_accuracy_drop: float = 0.05,
                    strengths: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)) -> tuple[Purifier, list[StrengthTrial]]:
    """The strongest purifier of one transform whose clean accuracy on `images` stays within `max_accuracy_drop` of
    the unpurified accuracy (Sec. III-D3 step ii). Only clean data is used, as a defender would.

    Returns the purifier (strength 0 if none qualifies) and every strength tried, 0 (no purification) first.
    """
    check_fraction(max_accuracy_drop, "max_accuracy_drop", allow_zero=True)
    check_name("purification", transform, TRANSFORMS)
    for strength in strengths:
        check_fraction(strength, "strengths (each a purification strength)", allow_zero=True)
    _check_clean_set(query, images, labels)
    weights = estimate.weights(low_pass)
    baseline = _accuracy(query, images, labels)
    tried = [StrengthTrial(0.0, baseline)]
    chosen = Purifier(transform, 0.0, weights, estimate.mean)
    for strength in sorted(strengths):
        candidate = Purifier(transform, strength, weights, estimate.mean)
        accuracy = _accuracy(query, candidate(images), labels)
        tried.append(StrengthTrial(strength, accuracy))
        if accuracy >= baseline - max_accuracy_drop:
            chosen = candidate
    return chosen, tried
