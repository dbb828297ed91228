"""BDMAE: blind backdoor defence at test time with a masked autoencoder ([BDMAE], "Mask and Restore"), on
hard-label black-box access.

Three stages, each batched over images while keeping the paper's per-image algorithm:

1. trigger scores from random masks (Sec. 4.2, Alg. 1): an image-based score S_i from the SSIM between the
   image and the fused restorations (Eq. 2), and a label-based score S_l from the masks whose restoration
   changes the label;
2. topology-aware refinement (Sec. 4.3, Alg. 2) of each score with masks grown from high-score tokens and
   their 4-neighbours;
3. adaptive restoration (Sec. 4.4): K nested thresholds raised until at most 25 % of the tokens exceed the
   lowest, K restorations fused into the purified image.

Implementation facts the paper leaves out follow the authors' public code, as docs/implementation.md#bdmae records
them (mask sampling by cut permutations, SSIM constants, cumulative fusion, L, the threshold update). Where the
code and the paper disagree we follow the paper and keep the other as an option:
the first token of a topology-aware mask is the argmax of the score (paper) unless `random_seed_token`
(authors' code: argmax of U(0,1) x score), and thresholds rise while more than 25 % of tokens exceed the
lowest one (paper: "<= 25 %" must hold; code: ">= 25 %" triggers a rise).

Randomness is drawn from one generator per image, seeded from (seed, image index), so an image's result does
not depend on what else is in its batch: the batched implementation equals the one-image-at-a-time loop.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from workbench.core.mae import MAERestorer, neighbours4
from workbench.core.query import QueryModel
from workbench.core.runtime import image_generators
from workbench.core.validation import (
    WorkbenchError,
    check_fraction,
    check_images,
    check_name,
    check_non_negative,
    check_positive,
    check_positive_int,
    check_tensor,
)


@dataclass(frozen=True)
class BDMAEConfig:
    """BDMAE's hyper-parameters; defaults are the paper's (App. B.2, Sec. 4.3-4.4).

    Args:
        outer_rounds: N_o, rounds of random masks.
        inner_masks: N_i, masks per round.
        refine_steps: N_r, refinement steps per score.
        mask_ratio: fraction of tokens masked by random masks (0.75).
        beta0: score step of the refinement (0.05).
        neighbour_bonus: u, the bonus of 4-neighbours of selected tokens (0.5; App. F.1).
        image_score_level: S_i level that defines L for S_i's refinement (0.2).
        alpha: weight of S_i in S = alpha S_i + (1 - alpha) S_l (0.5; Base-i = 1, Base-l = 0).
        refine: run the topology-aware refinement (False = the "no refinement" ablation).
        thresholds: the K initial thresholds tau_1 >= ... >= tau_K.
        max_trigger_fraction: the 25 % rule.
        threshold_growth: (1 - tau_k) <- growth * (1 - tau_k) per rise (authors' code: 0.99).
        max_threshold_rises: at most this many rises (authors' code: 200).
        fixed_threshold: if set, restore the single mask S >= this value instead of the adaptive fusion
            (Fig. 5d's ablation).
        random_seed_token: start topology-aware masks at argmax U(0,1) x S (authors' code) instead of argmax S.
    """

    outer_rounds: int = 5
    inner_masks: int = 5
    refine_steps: int = 10
    mask_ratio: float = 0.75
    beta0: float = 0.05
    neighbour_bonus: float = 0.5
    image_score_level: float = 0.2
    alpha: float = 0.5
    refine: bool = True
    thresholds: tuple[float, ...] = (0.6, 0.55, 0.5, 0.45, 0.4)
    max_trigger_fraction: float = 0.25
    threshold_growth: float = 0.99
    max_threshold_rises: int = 200
    fixed_threshold: float | None = None
    random_seed_token: bool = False

    def __post_init__(self) -> None:
        for name in ("outer_rounds", "inner_masks", "max_threshold_rises"):
            check_positive_int(getattr(self, name), name)
        if not isinstance(self.refine_steps, int) or self.refine_steps < 0:
            raise WorkbenchError(f"refine_steps must be an integer >= 0, got {self.refine_steps!r}")
        check_fraction(self.mask_ratio, "mask_ratio", allow_one=False)
        check_fraction(self.alpha, "alpha", allow_zero=True)
        check_fraction(self.max_trigger_fraction, "max_trigger_fraction")
        check_fraction(self.threshold_growth, "threshold_growth", allow_one=False)
        check_positive(self.beta0, "beta0")
        check_non_negative(self.neighbour_bonus, "neighbour_bonus")
        check_fraction(self.image_score_level, "image_score_level")
        if self.fixed_threshold is not None:
            check_fraction(self.fixed_threshold, "fixed_threshold")
        if not isinstance(self.thresholds, (tuple, list)) or not self.thresholds:
            raise WorkbenchError(f"thresholds must be a non-empty sequence of scores in (0, 1], got "
                                 f"{self.thresholds!r}")
        taus = tuple(check_fraction(t, "thresholds (each tau_k, a trigger score)") for t in self.thresholds)
        if any(b > a for a, b in itertools.pairwise(taus)):
            raise WorkbenchError(f"thresholds must be non-increasing, got {self.thresholds}")
        object.__setattr__(self, "thresholds", taus)


#: The paper's variants (Sec. 5, Fig. 5, App. F.4).
VARIANTS = {
    "full": BDMAEConfig(),
    "base_i": BDMAEConfig(alpha=1.0),
    "base_l": BDMAEConfig(alpha=0.0),
    "no_refinement": BDMAEConfig(refine=False),
    "fixed_threshold": BDMAEConfig(fixed_threshold=0.5),
    # not in the paper: the authors' code seeds refinement masks at argmax U(0,1) x S
    # (docs/implementation.md#bdmae-refinement)
    "authors_seed": BDMAEConfig(random_seed_token=True),
}


@dataclass
class RefinementTrace:
    """Alg. 2's record of one refined score for N images, N_r steps and L tokens (tensors on the CPU).

    Attributes:
        masks: m_r of each step, (N, N_r, L) bool.
        regions: the refine region m_rf of each step, (N, N_r, L) bool.
        labels: the label after restoring m_r, (N, N_r); -1 where the image was not refined (L = 0).
        scores: the score after each step, (N, N_r, L).
        top: L, the tokens the refinement works on, per image (N,).
    """

    masks: torch.Tensor
    regions: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor
    top: torch.Tensor

    @property
    def steps(self) -> int:
        return self.masks.shape[1]

    @classmethod
    def concat(cls, traces: list[RefinementTrace]) -> RefinementTrace:
        return cls(*(torch.cat([getattr(t, f.name) for t in traces]) for f in dataclasses.fields(cls)))


#: the scores refinement can trace: S_i ("image") and S_l ("label")
SCORE_KINDS = ("image", "label")


@dataclass
class Refinements:
    """The refinement traces of a run: of S_i (`image`) and of S_l (`label`), None where that score was not refined
    (Base-l never uses S_i, Base-i never S_l, and the no-refinement ablation refines neither)."""

    image: RefinementTrace | None = None
    label: RefinementTrace | None = None

    @property
    def kinds(self) -> list[str]:
        """The refined scores, of "image" and "label"."""
        return [kind for kind in SCORE_KINDS if getattr(self, kind) is not None]

    def of(self, kind: str) -> RefinementTrace:
        """The trace of score `kind` ("image" or "label"); an error names the refined ones if it was not refined."""
        check_name("score kind", kind, SCORE_KINDS)
        trace = getattr(self, kind)
        if trace is None:
            raise WorkbenchError(f"score {kind!r} was not refined in this run (refined: {self.kinds or 'none'}; "
                                 "a variant without refinement?)")
        return trace

    @classmethod
    def concat(cls, parts: list[Refinements]) -> Refinements:
        return cls(**{kind: RefinementTrace.concat([getattr(p, kind) for p in parts]) for kind in parts[0].kinds})


@dataclass
class BDMAEResult:
    """Everything BDMAE computed for a batch of N images on an L-token grid (tensors on the CPU).

    Attributes:
        purified: rho(x), (N, C, H, W).
        labels: f(rho(x)), (N,).
        original_labels: f(x), (N,).
        score_image_initial, score_label_initial: S_i and S_l after Alg. 1, (N, L).
        score_image, score_label: after refinement (Alg. 2), (N, L).
        score: S = alpha S_i + (1 - alpha) S_l, (N, L).
        thresholds: final thresholds (N, K) after the 25 % rule.
        restoration_masks: the K nested masks of the adaptive restoration, (N, K, L).
        refinement: the `RefinementTrace` of each refined score (S_i, S_l).
        queries: label queries used in total; restorations: MAE restorations in total.
    """

    purified: torch.Tensor
    labels: torch.Tensor
    original_labels: torch.Tensor
    score_image_initial: torch.Tensor
    score_label_initial: torch.Tensor
    score_image: torch.Tensor
    score_label: torch.Tensor
    score: torch.Tensor
    thresholds: torch.Tensor
    restoration_masks: torch.Tensor
    refinement: Refinements
    queries: int
    restorations: int

    def to_json_dict(self) -> dict[str, Any]:
        """Nested lists (for small batches: the purified images are included)."""
        def convert(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                return value.tolist()
            if dataclasses.is_dataclass(value):
                return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
            return value
        return {f.name: convert(getattr(self, f.name)) for f in dataclasses.fields(self)}


# ----------------------------------------------------------------------------------------------- SSIM
def _gaussian_window(size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Normalised 2-D Gaussian window (size, size), in float64 by default (sums to 1 to ~1e-16)."""
    coords = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return g.view(-1, 1) * g.view(1, -1)


def ssim_map(x: torch.Tensor, y: torch.Tensor, *, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-pixel SSIM (App. D Eq. A.3) between image batches (N, C, H, W), averaged over channels -> (N, H, W), in
    the inputs' dtype.

    Gaussian window 11 x 11, sigma 1.5, applied per channel with replicate padding; C1 = 0.01^2, C2 = 0.03^2
    for data range 1 (follows the authors' public code). The local moments are accumulated in float64: the
    variance blur(x^2) - blur(x)^2 cancels almost all of its digits on flat regions, and in float32 it was off by
    up to ~4e-4 there. Away from the border (window // 2 pixels, where the padding differs) it equals Wang et
    al.'s SSIM as scikit-image computes it (`gaussian_weights=True, use_sample_covariance=False`) to 1e-6.
    """
    check_images(x, name="x")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1 or window % 2 == 0:
        raise WorkbenchError(f"window must be an odd positive integer (the Gaussian window's side), got {window!r}")
    check_positive(sigma, "sigma")
    c = x.shape[1]
    if not isinstance(y, torch.Tensor) or y.shape != x.shape or not bool(torch.isfinite(y).all()):
        # y may leave [0, 1]: BDMAE compares with the MAE's unclipped restoration (authors' code)
        raise WorkbenchError(f"y must be a finite tensor of x's shape {tuple(x.shape)}, got "
                             f"{tuple(getattr(y, 'shape', ()))}")
    accumulate = torch.float32 if x.device.type == "mps" else torch.float64  # Apple's MPS has no float64
    kernel = _gaussian_window(window, sigma, accumulate).to(x.device).expand(c, 1, window, window)
    pad = window // 2
    x64, y64 = x.to(accumulate), y.to(accumulate)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(t, (pad, pad, pad, pad), mode="replicate"), kernel, groups=c)

    mu_x, mu_y = blur(x64), blur(y64)
    var_x = blur(x64 * x64) - mu_x**2
    var_y = blur(y64 * y64) - mu_y**2
    cov = blur(x64 * y64) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    ssim = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim.mean(dim=1).to(x.dtype)


def token_dissimilarity(x: torch.Tensor, y: torch.Tensor, grid: int) -> torch.Tensor:
    """1 - SSIM(x, y) sampled on the token grid (nearest pixel), (N, grid * grid): one round's S_i (Alg. 1)."""
    check_positive_int(grid, "grid")
    similarity = ssim_map(x, y).unsqueeze(1)
    return 1 - F.interpolate(similarity, size=(grid, grid), mode="nearest").flatten(1)


# ---------------------------------------------------------------------------------------------- masks
def cut_permutation_masks(num_tokens: int, count: int, masks: int, gen: torch.Generator) -> torch.Tensor:
    """Alg. 1 line 4 as the authors sample it: concatenate `masks` random permutations of the token ids and cut
    `masks` consecutive slices of `count` ids, so each round masks every token at least once (twice at the
    paper's 147 of 196) and Eq. 2's denominator is never zero. Returns (masks, num_tokens) bool."""
    check_positive_int(num_tokens, "num_tokens")
    check_positive_int(masks, "masks")
    if check_positive_int(count, "count") > num_tokens:
        raise WorkbenchError(f"count must be at most num_tokens ({num_tokens}): a mask masks `count` of the tokens, "
                             f"got {count}")
    ids = torch.cat([torch.randperm(num_tokens, generator=gen) for _ in range(masks)])
    out = torch.zeros(masks, num_tokens, dtype=torch.bool)
    for i in range(masks):
        out[i, ids[i * count:(i + 1) * count]] = True
    return out


def tie_priorities(gens: list[torch.Generator], num_tokens: int) -> torch.Tensor:
    """(N, L) a random permutation of the token ids per image, drawn from the image's own generator. Used as the
    secondary key wherever scores tie (S_l takes only N_o N_i + 1 values, so ties are the rule): breaking them by
    token index would bias every selection towards the top-left corner. The paper is silent on ties. One
    refinement step uses one permutation for both its refine region and its seed token, so that the seed (the
    top-scoring token) lies inside the region."""
    check_positive_int(num_tokens, "num_tokens")
    return torch.stack([torch.randperm(num_tokens, generator=g) for g in gens])


def _tie_level(score: torch.Tensor) -> torch.Tensor:
    """Scores rounded to 1e-6, so that float rounding of the +-beta0 updates does not split true ties."""
    return torch.round(score, decimals=6)


def _argmax_random_ties(values: torch.Tensor, allowed: torch.Tensor, priority: torch.Tensor) -> torch.Tensor:
    """(N,) per row, the allowed position of the largest value; ties go to the highest `priority`."""
    masked = torch.where(allowed, values, torch.full_like(values, -torch.inf))
    best = masked == masked.amax(dim=1, keepdim=True)
    return torch.argmax(torch.where(best & allowed, priority, -1), dim=1)


def topology_masks(scores: torch.Tensor, regions: torch.Tensor, sizes: torch.Tensor, adjacency: torch.Tensor,
                   bonus: float, gens: list[torch.Generator], priority: torch.Tensor,
                   random_seed_token: bool) -> torch.Tensor:
    """Topology-aware token masks m_r (Sec. 4.3; App. F.1), one per image, grown in parallel.

    Image n starts at argmax S (or argmax U(0,1) S) and repeatedly adds argmax_k U(0,1) (S_k + bonus [k is a
    4-neighbour of the selection]) among the not yet selected tokens of its refine region m_rf, until it
    holds sizes[n] tokens; exact ties go to the token of highest `priority`. Image n draws exactly sizes[n] x L
    uniforms from its own generator, so its mask does not depend on the other images of the batch.

    Args:
        scores: (N, L) current scores. regions: (N, L) bool m_rf. sizes: (N,) |T| (>= 1).
        adjacency: (L, L) bool 4-neighbourhood. bonus: u. gens: one generator per image.
        priority: (N, L) tie-break order (`tie_priorities`), the one that chose `regions`.

    Returns:
        (N, L) bool masks.
    """
    check_tensor(scores, "scores", ndim=2)
    n, num_tokens = scores.shape
    check_tensor(regions, "regions", shape=(n, num_tokens), kind="bool")
    check_tensor(sizes, "sizes", shape=(n,), kind="integer")
    if n and (int(sizes.min()) < 1 or int(sizes.max()) > num_tokens):
        raise WorkbenchError(f"sizes must lie in [1, {num_tokens}] (tokens per mask), got "
                             f"[{int(sizes.min())}, {int(sizes.max())}]")
    check_tensor(adjacency, "adjacency", shape=(num_tokens, num_tokens), kind="bool")
    check_non_negative(bonus, "bonus")
    if len(gens) != n:
        raise WorkbenchError(f"gens must hold one generator per image: {n} images but {len(gens)} generators")
    check_tensor(priority, "priority", shape=(n, num_tokens), kind="integer")
    longest = int(sizes.max())
    draws = torch.zeros(n, longest, num_tokens)
    for i, gen in enumerate(gens):
        draws[i, : int(sizes[i])] = torch.rand(int(sizes[i]), num_tokens, generator=gen)
    rows = torch.arange(n)
    seed_values = draws[:, 0] * scores if random_seed_token else _tie_level(scores)
    first = _argmax_random_ties(seed_values, torch.ones_like(regions), priority)
    selected = torch.zeros(n, num_tokens, dtype=torch.bool)
    selected[rows, first] = True
    near = adjacency[first].clone()
    for t in range(1, longest):
        candidates = regions & ~selected & (t < sizes).view(-1, 1)
        weights = draws[:, t] * (scores + bonus * near.to(scores.dtype))
        pick = _argmax_random_ties(weights, candidates, priority)
        grow = candidates.any(dim=1)
        selected[rows[grow], pick[grow]] = True
        near[grow] |= adjacency[pick[grow]]
    return selected


def top_tokens(score: torch.Tensor, count: torch.Tensor, priority: torch.Tensor) -> torch.Tensor:
    """(N, L) bool: the `count[n]` highest-scoring tokens of each image, ties broken by `priority` (highest
    first)."""
    check_tensor(score, "score", ndim=2)
    check_tensor(count, "count", shape=score.shape[:1], kind="integer")
    check_tensor(priority, "priority", shape=tuple(score.shape), kind="integer")
    by_priority = torch.argsort(priority, dim=1, descending=True)
    within = torch.argsort(_tie_level(score).gather(1, by_priority), dim=1, descending=True, stable=True)
    order = by_priority.gather(1, within)
    rank = torch.argsort(order, dim=1)
    return rank < count.view(-1, 1)


# ------------------------------------------------------------------------------------------- defence
class BDMAE:
    """Blind test-time purification of a black-box classifier (hard labels only).

    Args:
        classifier: label-access `QueryModel` of the suspicious model.
        restorer: the generic MAE (`MAERestorer`).
        config: hyper-parameters (default: the paper's).
        batch_images: images processed together (memory bound: each stage restores N_i masks per image).
    """

    def __init__(self, classifier: QueryModel, restorer: MAERestorer, config: BDMAEConfig | None = None,
                 batch_images: int = 64) -> None:
        if not isinstance(classifier, QueryModel):
            raise WorkbenchError("BDMAE is a black-box defence: pass a QueryModel (label access is enough), "
                                 "not the model itself")
        self.classifier = classifier
        self.restorer = restorer
        self.config = config or BDMAEConfig()
        self.batch_images = check_positive_int(batch_images, "batch_images")
        self.adjacency = neighbours4(restorer.grid)
        if round(self.config.mask_ratio * restorer.grid**2) < 1:
            raise WorkbenchError(f"mask_ratio={self.config.mask_ratio} masks no token of this MAE's "
                                 f"{restorer.grid ** 2}; give at least {1 / restorer.grid ** 2:.3g} (the paper: 0.75)")

    # -------------------------------------------------------------------------------------- public API
    def purify(self, x: torch.Tensor, *, seed: int = 0, first_index: int = 0) -> BDMAEResult:
        """Run BDMAE on images x (N, C, H, W) in [0, 1].

        Args:
            x: the test images (clean or backdoored: the defence is blind).
            seed: seed of all random choices.
            first_index: global index of x[0]; image n draws its randomness from (seed, first_index + n), so
                splitting a test set into calls gives the same result as one call.
        """
        check_images(x)
        if len(x) == 0:
            raise WorkbenchError("images are empty: pass at least one image (N, C, H, W) to purify")
        parts = [self._purify_batch(x[s:s + self.batch_images], seed, first_index + s)
                 for s in range(0, len(x), self.batch_images)]
        return _concat(parts)

    def predict(self, x: torch.Tensor, *, seed: int = 0, first_index: int = 0) -> torch.Tensor:
        """Labels of the purified images, (N,) (`first_index` as in `purify`)."""
        return self.purify(x, seed=seed, first_index=first_index).labels

    def _labels(self, restored: torch.Tensor) -> torch.Tensor:
        """Label queries on restorations. The MAE output is not clipped (authors' code) and the authors feed it
        to the model as is; the workbench's query API takes images in [0, 1], so restorations are clipped at
        this boundary only (a deviation of at most a few hundredths in a few pixels)."""
        return self.classifier.labels(restored.clamp(0, 1))

    # -------------------------------------------------------------------------------------- the stages
    def _purify_batch(self, x: torch.Tensor, seed: int, first_index: int) -> BDMAEResult:
        cfg = self.config
        queries0, restorations0 = self.classifier.queries, self.restorer.restorations
        gens = image_generators(seed, first_index, len(x))
        y0 = self.classifier.labels(x)
        s_img0, s_lab0 = self.trigger_scores(x, y0, gens)
        refinement = Refinements()
        s_img, s_lab = s_img0.clone(), s_lab0.clone()
        if cfg.refine and cfg.refine_steps > 0:
            if cfg.alpha > 0:  # Base-l never uses S_i, so it is not refined (and costs nothing)
                size = (s_img >= cfg.image_score_level).sum(dim=1)
                s_img, refinement.image = self.refine_scores(x, y0, s_img, size, gens)
            if cfg.alpha < 1:
                size = s_lab.sum(dim=1).floor().long()  # L = int(sum S_l)
                s_lab, refinement.label = self.refine_scores(x, y0, s_lab, size, gens)
        score = cfg.alpha * s_img + (1 - cfg.alpha) * s_lab
        purified, taus, masks = self.adaptive_restore(x, score)
        labels = self._labels(purified)
        return BDMAEResult(purified, labels.cpu(), y0.cpu(), s_img0, s_lab0, s_img, s_lab, score, taus, masks,
                           refinement, self.classifier.queries - queries0,
                           self.restorer.restorations - restorations0)

    def trigger_scores(self, x: torch.Tensor, y0: torch.Tensor,
                       gens: list[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        """Alg. 1: S_i (image-based, SSIM) and S_l (label-based), each (N, L)."""
        cfg = self.config
        n, num_tokens, grid = len(x), self.restorer.grid**2, self.restorer.grid
        count = round(cfg.mask_ratio * num_tokens)
        s_img = torch.zeros(n, num_tokens)
        flips = torch.zeros(n, num_tokens)
        fused_sum = torch.zeros_like(x)
        fused_den = torch.zeros(n, 1, *x.shape[2:], dtype=x.dtype, device=x.device)
        for _ in range(cfg.outer_rounds):
            masks = torch.stack([cut_permutation_masks(num_tokens, count, cfg.inner_masks, g) for g in gens])
            flat = masks.view(n * cfg.inner_masks, num_tokens)
            x_rep = x.repeat_interleave(cfg.inner_masks, dim=0)
            restored, pixel = self.restorer.restore(x_rep, flat)
            labels = self._labels(restored).view(n, cfg.inner_masks)
            changed = (labels != y0.view(-1, 1).to(labels.device)).cpu()
            flips += (masks.float() * changed.unsqueeze(-1).float()).sum(dim=1)
            # Eq. 2, accumulated over all restorations so far (authors' code)
            fused_sum += (restored * pixel).view(n, cfg.inner_masks, *x.shape[1:]).sum(dim=1)
            fused_den += pixel.view(n, cfg.inner_masks, 1, *x.shape[2:]).sum(dim=1)
            fused = fused_sum / fused_den.clamp_min(1)
            s_img += token_dissimilarity(x, fused, grid).cpu() / cfg.outer_rounds
        s_lab = flips / (cfg.outer_rounds * cfg.inner_masks)
        return s_img, s_lab

    def refine_scores(self, x: torch.Tensor, y0: torch.Tensor, score: torch.Tensor, top: torch.Tensor,
                      gens: list[torch.Generator]) -> tuple[torch.Tensor, RefinementTrace]:
        """Alg. 2: N_r topology-aware refinement steps of one score (N, L) on its top-`top[n]` tokens."""
        cfg = self.config
        n, num_tokens = score.shape
        score = score.clone()
        trace = RefinementTrace(masks=torch.zeros(n, cfg.refine_steps, num_tokens, dtype=torch.bool),
                                regions=torch.zeros(n, cfg.refine_steps, num_tokens, dtype=torch.bool),
                                labels=torch.full((n, cfg.refine_steps), -1, dtype=torch.long),
                                scores=torch.zeros(n, cfg.refine_steps, num_tokens), top=top.clone())
        active = top > 0  # L = 0: nothing to refine for that image (no restoration, no query)
        idx = active.nonzero().flatten()
        sizes = (top[idx] // 2).clamp_min(1)  # |T| = L / 2
        for r in range(cfg.refine_steps):
            priority = tie_priorities(gens, num_tokens)
            region = top_tokens(score, top, priority) & active.view(-1, 1)
            masks = torch.zeros(n, num_tokens, dtype=torch.bool)
            if len(idx):
                masks[idx] = topology_masks(score[idx], region[idx], sizes, self.adjacency, cfg.neighbour_bonus,
                                            [gens[i] for i in idx.tolist()], priority[idx], cfg.random_seed_token)
                restored, _ = self.restorer.restore(x[idx], masks[idx])
                labels = self._labels(restored).cpu()
                sign = torch.where(labels == y0[idx].cpu(), -1.0, 1.0).view(-1, 1)
                rest = region[idx] & ~masks[idx]
                score[idx] += sign * cfg.beta0 * (masks[idx].float() - rest.float())  # Alg. 2 lines 7-8
                trace.labels[idx, r] = labels
            trace.masks[:, r], trace.regions[:, r], trace.scores[:, r] = masks, region, score
        return score, trace

    def adaptive_restore(self, x: torch.Tensor, score: torch.Tensor, fixed_threshold: float | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sec. 4.4: raise the thresholds until <= 25 % of tokens exceed the lowest, restore the K nested masks
        and fuse them (Eq. 2) inside the lowest threshold's mask. With a fixed threshold (argument, else the
        config's), restore the single mask S >= threshold instead (Fig. 5d). Returns (rho(x), thresholds (N, K),
        masks (N, K, L))."""
        cfg = self.config
        n, num_tokens = score.shape
        fixed_threshold = cfg.fixed_threshold if fixed_threshold is None else fixed_threshold
        if fixed_threshold is not None:
            taus = torch.full((n, 1), float(fixed_threshold))
        else:
            taus = torch.tensor(cfg.thresholds).repeat(n, 1)
            for _ in range(cfg.max_threshold_rises):
                too_many = (score >= taus[:, -1:]).float().mean(dim=1) > cfg.max_trigger_fraction
                if not bool(too_many.any()):
                    break
                taus[too_many] = 1 - cfg.threshold_growth * (1 - taus[too_many])
        masks = score.unsqueeze(1) >= taus.unsqueeze(-1)  # (N, K, L), nested
        k = masks.shape[1]
        restored, pixel = self.restorer.restore(x.repeat_interleave(k, dim=0), masks.view(n * k, num_tokens))
        restored = restored.view(n, k, *x.shape[1:])
        pixel = pixel.view(n, k, 1, *x.shape[2:])
        fused = (restored * pixel).sum(dim=1) / pixel.sum(dim=1).clamp_min(1)
        outer = pixel[:, -1]  # the lowest threshold's mask contains all others
        return x * (1 - outer) + fused * outer, taus, masks


def _concat(parts: list[BDMAEResult]) -> BDMAEResult:
    if len(parts) == 1:
        return parts[0]
    merged: dict[str, Any] = {}
    for field in dataclasses.fields(BDMAEResult):
        values = [getattr(p, field.name) for p in parts]
        if field.name in ("queries", "restorations"):
            merged[field.name] = sum(values)
        elif field.name == "refinement":
            merged[field.name] = Refinements.concat(values)
        else:
            merged[field.name] = torch.cat(values)
    return BDMAEResult(**merged)
