"""L-RED: Lagrange-based reverse-engineering detection of imperceptible backdoors ([L-RED]).

Spec: [L-RED] Sec. 3, App. A.1-A.2 and docs/implementation.md#l-red. Two steps:

1. Pattern estimation (Alg. 1). For each putative target t: v = 0 and w uniform over the classes s != t; each
   iteration takes a step of length delta along the normalised gradient of the surrogate
   J_t(v, w) = sum_s w_s mean_{x in D_s} log p(t | [x + v]_c) (Eq. 5), recomputes the misclassification fractions
   q_st(v) and Q_t = sum_s w_s q_st (Eq. 3), stops when Q_t > pi, and otherwise anneals the weights with the
   temperature T = -log Q_t (Eq. 7) and the closed form w_s = softmax_s(q_st / T) (Eq. 8), or resets them to
   uniform when Q_t = 0 (Alg. 1 line 12).
2. Anomaly detection (Sec. 3.2). r_t = 1 / ||v_t||_2; a Gamma null G fitted to every statistic but the largest;
   order-statistic p-value 1 - G(r_max)^K; attack if p < theta; inferred target argmax_t r_t.

RED-U (the "all other classes are sources" baseline) is the same estimation with w frozen uniform; RED-P
([RED-P]) runs one estimation per class pair (s, t) on D_s alone, with the same test over all pairs.

Every variant is one call of `estimate_patterns`, which runs all estimation problems of a classifier at once: one
forward and backward pass per iteration over every (problem, image) pair still running, on any device. The
estimation is deterministic (no random draws) and its bytes do not depend on the number of CPU threads; the seed
only chooses the clean images (`detection_images`).

Beyond the paper (both from the author's related scripts, see docs/implementation.md#l-red-estimation): an
estimation also stops when ||v||_2 exceeds `max_norm` (6), and only x + v is clipped to [0, 1], never v itself.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn
from tqdm.auto import tqdm

from workbench.core.classifier import check_model_images, num_classes_of
from workbench.core.runtime import make_generator
from workbench.core.validation import (
    WorkbenchError,
    check_fraction,
    check_images,
    check_labels,
    check_positive,
    check_positive_int,
    check_tensor,
)

WEIGHTINGS = ("anneal", "uniform")


@dataclass(frozen=True)
class LREDConfig:
    """Settings of L-RED (Sec. 4.3: pi = 0.9, delta = 1e-4, theta = 0.05).

    Args:
        pi: misclassification fraction Q_t at which an estimation stops (Eq. 3).
        step: delta, the length of each step on v (Eq. 4-5), in [0, 1] pixel units (l2 over all pixels).
        max_iterations: tau_max of Alg. 1.
        max_norm: an estimation also stops when ||v||_2 exceeds this (the author's scripts; not in the paper).
        theta: detection threshold on the order-statistic p-value.
        weighting: "anneal" (RED-A, Eqs. 7-8) or "uniform" (RED-U: w frozen at w^(0)).
        free_location: fit the Gamma null with a free location (see `order_statistic_test`); default location 0.
    """

    pi: float = 0.9
    step: float = 1e-4
    max_iterations: int = 100_000
    max_norm: float = 6.0
    theta: float = 0.05
    weighting: str = "anneal"
    free_location: bool = False

    def __post_init__(self) -> None:
        check_fraction(self.pi, "pi", allow_one=False)
        check_positive(self.step, "step")
        check_positive_int(self.max_iterations, "max_iterations")
        check_positive(self.max_norm, "max_norm")
        check_fraction(self.theta, "theta", allow_one=False)
        if self.weighting not in WEIGHTINGS:
            raise WorkbenchError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")


@dataclass
class EstimationResult:
    """Patterns estimated for P problems (putative targets, or class pairs for RED-P) on K classes.

    The trace has one row per iteration; a problem's rows after it stopped are NaN. Row i holds the values
    after the i-th step: Q_t(v^(i), w^(i-1)) (the stopping test of Alg. 1 line 5), T^(i) (NaN where Q_t = 0 or the
    problem stopped there), w^(i) and ||v^(i)||_2.
    """

    targets: torch.Tensor  # (P,) putative target class of each problem
    sources: torch.Tensor  # (P, K) bool: the classes whose images the problem uses (s != t; one class for RED-P)
    patterns: torch.Tensor  # (P, C, H, W) the estimated v of each problem
    norms: torch.Tensor  # (P,) ||v||_2
    weights: torch.Tensor  # (P, K) final w (zero outside `sources`)
    iterations: torch.Tensor  # (P,) iterations run
    reached: torch.Tensor  # (P,) bool: Q_t > pi was reached (False: stopped by max_norm or max_iterations)
    trace_q: torch.Tensor  # (iterations, P)
    trace_temperature: torch.Tensor  # (iterations, P)
    trace_weights: torch.Tensor  # (iterations, P, K)
    trace_norm: torch.Tensor  # (iterations, P)
    seconds: float
    snapshot_iterations: torch.Tensor  # (S,) the iterations at which `trace_patterns` were taken
    trace_patterns: torch.Tensor  # (S, P, C, H, W) v^(i) every `snapshot_every` iterations (frozen once stopped)

    def pattern_at(self, problem: int, iteration: int) -> torch.Tensor:
        """v of one problem at the latest snapshot taken at or before `iteration` (v^(0) = 0 before the first);
        the final pattern from the problem's last iteration on."""
        if iteration >= int(self.iterations[problem]):
            return self.patterns[problem]
        taken = torch.nonzero(self.snapshot_iterations <= iteration).flatten()
        return self.trace_patterns[taken[-1], problem] if len(taken) else torch.zeros_like(self.patterns[problem])


def _class_sums(values: torch.Tensor, problem: torch.Tensor, labels: torch.Tensor, shape: tuple[int, int]
                ) -> torch.Tensor:
    """Sum of `values` over the (problem, class) cell of every entry -> (P, K)."""
    flat = torch.zeros(shape[0] * shape[1], dtype=values.dtype, device=values.device)
    return flat.index_add(0, problem * shape[1] + labels, values).view(shape)


def estimate_patterns(model: nn.Module, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor,
                      sources: torch.Tensor, config: LREDConfig | None = None, *, snapshot_every: int = 0,
                      progress: bool = False) -> EstimationResult:
    """Alg. 1 for P estimation problems at once; problem p pushes the images of the classes in `sources[p]`
    towards `targets[p]`.

    Args:
        model: the classifier (inputs (N, C, H, W) in [0, 1], outputs logits over K classes); its gradients are
            used (white-box), its parameters are not changed.
        x: clean detection images (N, C, H, W) in [0, 1]; y: their labels (N,).
        targets: (P,) putative target classes.
        sources: (P, K) bool, the classes each problem uses (never its own target; at least one class with images).
        config: `LREDConfig`; its `weighting` chooses RED-A (anneal) or RED-U / RED-P (uniform).
        snapshot_every: keep every problem's v every this many iterations (0: none), for the annealing player.

    Returns:
        An `EstimationResult` (tensors on the CPU).
    """
    config = config or LREDConfig()
    check_model_images(model, x, "detection images")
    if isinstance(snapshot_every, bool) or not isinstance(snapshot_every, int) or snapshot_every < 0:
        raise WorkbenchError(f"snapshot_every must be an integer >= 0 (0: no snapshots), got {snapshot_every!r}")
    check_tensor(sources, "sources", ndim=2, kind="bool")
    num_classes = sources.shape[1]
    if not isinstance(y, torch.Tensor) or y.shape != (len(x),) or y.dtype != torch.long:
        raise WorkbenchError(f"labels must be a long tensor of shape ({len(x)},), got "
                             f"{tuple(getattr(y, 'shape', ()))} {getattr(y, 'dtype', type(y).__name__)}")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise WorkbenchError(f"labels must lie in [0, {num_classes - 1}] (K = {num_classes} from sources)")
    check_labels(targets, len(sources), num_classes, name="targets")
    if bool(sources[torch.arange(len(targets)), targets].any()):
        raise WorkbenchError("a problem lists its own target class among its sources; sources must exclude t")
    counts = torch.bincount(y, minlength=num_classes).to(sources.device)
    if bool(((sources & (counts > 0)).sum(1) == 0).any()):
        raise WorkbenchError("every problem needs at least one source class with detection images")
    device = next(model.parameters()).device
    x, y, targets = x.to(device), y.to(device), targets.to(device)
    sources, counts = (sources & (counts > 0)).to(device), counts.to(device)
    problems, k = sources.shape
    # (problem, image) pairs: each problem sees only its source classes' images
    problem_of, image_of = torch.nonzero(sources[:, y], as_tuple=True)
    inverse_counts = torch.where(counts > 0, 1.0 / counts.clamp(min=1), torch.zeros_like(counts, dtype=torch.float))

    uniform = sources.float() / sources.sum(1, keepdim=True)
    weights = uniform.clone()
    patterns = torch.zeros(problems, *x.shape[1:], device=device)
    running = torch.ones(problems, dtype=torch.bool, device=device)
    reached = torch.zeros(problems, dtype=torch.bool, device=device)
    iterations = torch.zeros(problems, dtype=torch.long, device=device)
    trace: dict[str, list[torch.Tensor]] = {"q": [], "temperature": [], "weights": [], "norm": [], "patterns": []}
    snapshot_iterations = []
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    bar = tqdm(total=problems, desc=f"L-RED ({config.weighting})", disable=not progress)
    try:
        for iteration in range(config.max_iterations + 1):
            pairs = running[problem_of]
            p_idx, i_idx = problem_of[pairs], image_of[pairs]
            v = patterns.detach().requires_grad_(True)
            # index_select, not v[p_idx]: its backward (index_add) sums each problem's pairs in one fixed order,
            # where v[p_idx]'s (index_put with accumulate) splits them across CPU threads, so that the last bits
            # of every later step depended on the thread count and the engine that ran the detection
            logits = model((x[i_idx] + v.index_select(0, p_idx)).clamp(0, 1))
            log_p = F.log_softmax(logits, dim=1).gather(1, targets[p_idx].unsqueeze(1)).squeeze(1)
            hits = (logits.argmax(1) == targets[p_idx]).float().detach()
            q = _class_sums(hits, p_idx, y[i_idx], (problems, k)) * inverse_counts  # q_st(v^(i)), Eq. 3
            if iteration > 0:  # Alg. 1 lines 5-12 for the step just taken
                q_total = (weights * q).sum(1)  # Q_t(v^(i), w^(i-1))
                norm = patterns.flatten(1).norm(dim=1)
                done = running & ((q_total > config.pi) | (norm > config.max_norm)
                                  | (iteration >= config.max_iterations))
                reached |= done & (q_total > config.pi)
                iterations[running] = iteration
                temperature = torch.where(q_total > 0, -torch.log(q_total.clamp(min=1e-30)), torch.nan)
                update = running & ~done
                if config.weighting == "anneal":  # Eq. 8 where Q_t > 0, uniform otherwise (line 12)
                    annealed = torch.softmax((q / temperature.clamp(min=1e-12).unsqueeze(1)).masked_fill(
                        ~sources, -math.inf), dim=1)
                    new = torch.where((q_total > 0).unsqueeze(1), annealed, uniform)
                    weights = torch.where(update.unsqueeze(1), new, weights)
                nan = torch.full_like(q_total, torch.nan)
                trace["q"].append(torch.where(running, q_total, nan))
                trace["temperature"].append(torch.where(update, temperature, nan))
                trace["weights"].append(torch.where(running.unsqueeze(1), weights, torch.nan))
                trace["norm"].append(torch.where(running, norm, nan))
                if snapshot_every and iteration % snapshot_every == 0:
                    trace["patterns"].append(patterns.detach().cpu())
                    snapshot_iterations.append(iteration)
                bar.update(int(done.sum()))
                running = update
                if not bool(running.any()):
                    break
                keep = running[p_idx]
                p_idx, i_idx, log_p = p_idx[keep], i_idx[keep], log_p[keep]
            # Eq. 5: J_t = sum_s w_s mean_{D_s} log p(t | [x + v]_c); normalised gradient step of length delta
            surrogate = (weights[p_idx, y[i_idx]] * inverse_counts[y[i_idx]] * log_p).sum()
            (grad,) = torch.autograd.grad(surrogate, v)
            # (stopped problems have no pairs left, hence a zero gradient and no step)
            length = grad.flatten(1).norm(dim=1).clamp(min=1e-20).view(-1, *[1] * (grad.ndim - 1))
            patterns = patterns + config.step * grad / length
    finally:
        bar.close()
        model.train(was_training)

    def stacked(name: str, *shape: int) -> torch.Tensor:
        return torch.stack(trace[name]).cpu() if trace[name] else torch.empty(0, *shape)

    return EstimationResult(
        targets=targets.cpu(), sources=sources.cpu(), patterns=patterns.detach().cpu(),
        norms=patterns.detach().flatten(1).norm(dim=1).cpu(), weights=weights.cpu(), iterations=iterations.cpu(),
        reached=reached.cpu(), trace_q=stacked("q", problems), trace_temperature=stacked("temperature", problems),
        trace_weights=stacked("weights", problems, k), trace_norm=stacked("norm", problems),
        seconds=time.perf_counter() - start, snapshot_iterations=torch.tensor(snapshot_iterations, dtype=torch.long),
        trace_patterns=stacked("patterns", problems, *x.shape[1:]))


# ------------------------------------------------------------------------------------------------- detection
METHODS = ("RED-A", "RED-U", "RED-P")


def order_statistic_test(statistics: torch.Tensor | np.ndarray, *, free_location: bool = False
                         ) -> tuple[float, tuple[float, float, float]]:
    """Sec. 3.2: fit a Gamma null to every statistic but the largest and return the order-statistic p-value
    1 - G(r_max)^K of the largest, with the fitted (shape, loc, scale) (`scipy.stats.gamma.fit`).

    The paper's Gamma has two parameters (location 0, the default here); `free_location=True` fits a location too,
    as the author's pairwise script does. With only K - 1 = 9 values the three-parameter fit overfits: on evenly
    spread Gamma(5, 0.2) quantiles it gives p = 0.04, the two-parameter fit 0.11. Either way the test is
    anti-conservative on i.i.d. statistics (the largest is left out of the fit): of 300 seeded samples of 10
    i.i.d. Gamma(5, 0.2) values, 24 % (location 0) and 31 % (free location) gave p < 0.05.

    The p-value is computed as -expm1(K log1p(-(1 - G(r_max)))) so that it keeps its precision where 1 - G^K is
    tiny; it is exactly 0 only where the Gamma tail itself underflows (the paper's "u.f.").
    """
    try:
        r = np.asarray(statistics, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise WorkbenchError(f"statistics must be a 1-D tensor or array of numbers, got {type(statistics).__name__}"
                             ) from exc
    if r.ndim != 1:
        raise WorkbenchError(f"statistics must be 1-D (one statistic per problem), got shape {r.shape}")
    if len(r) < 4 or not np.isfinite(r).all():
        raise WorkbenchError(f"the order-statistic test needs at least 4 finite statistics, got {r.tolist()}")
    top = int(np.argmax(r))
    rest = np.delete(r, top)
    if np.ptp(rest) == 0:  # scipy's Gamma fit fails on a sample without spread
        raise WorkbenchError(f"statistics all equal {rest[0]:g} but the largest: no Gamma null can be fitted; the "
                             "estimations stopped at the same norm (raise max_iterations or step)")
    shape, loc, scale = stats.gamma.fit(rest) if free_location else stats.gamma.fit(rest, floc=0)
    tail = float(stats.gamma.sf(r[top], shape, loc=loc, scale=scale))
    p_value = float(-np.expm1(len(r) * np.log1p(-tail))) if tail < 1 else 1.0
    return p_value, (float(shape), float(loc), float(scale))


@dataclass
class DetectionResult:
    """The verdict of one detector on one classifier.

    `statistics[p]` = 1 / ||v_p||_2 for estimation problem p (a putative target, or a pair for RED-P); the
    inferred target (and, for RED-P, source) is that of the largest statistic, reported whether or not an attack
    is detected. `source_weights` is the final w of that problem: RED-A's view of the source classes.
    """

    method: str
    p_value: float
    detected: bool
    inferred_target: int
    source_weights: torch.Tensor  # (K,)
    statistics: torch.Tensor  # (P,)
    gamma: tuple[float, float, float]  # (shape, loc, scale) of the null
    config: LREDConfig
    images_per_class: int
    estimation: EstimationResult = field(repr=False)

    @property
    def inferred_source(self) -> int:
        """The class with the largest final weight of the inferred target's problem."""
        return int(self.source_weights.argmax())

    def summary(self) -> dict[str, Any]:
        """The scalar results (JSON-ready; the estimation trace is left out)."""
        return {"method": self.method, "p_value": self.p_value, "detected": self.detected,
                "inferred_target": self.inferred_target, "inferred_source": self.inferred_source,
                "source_weights": [round(float(w), 6) for w in self.source_weights],
                "statistics": [float(r) for r in self.statistics], "gamma": list(self.gamma),
                "images_per_class": self.images_per_class, "seconds": self.estimation.seconds,
                "iterations": [int(i) for i in self.estimation.iterations], "config": asdict(self.config)}


def estimation_problems(method: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets (P,), sources (P, K)) of a method: one problem per putative target over every other class
    (RED-A, RED-U; P = K), or one per ordered class pair (s, t), s != t (RED-P; P = K (K - 1))."""
    if method not in METHODS:
        raise WorkbenchError(f"unknown L-RED method {method!r}; choose one of {', '.join(METHODS)}")
    check_positive_int(num_classes, "num_classes")
    others = ~torch.eye(num_classes, dtype=torch.bool)
    if method != "RED-P":
        return torch.arange(num_classes), others
    target, source = torch.nonzero(others, as_tuple=True)
    return target, F.one_hot(source, num_classes).bool()


def detect(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, method: str = "RED-A",
           config: LREDConfig | None = None, *, snapshot_every: int = 0, progress: bool = False) -> DetectionResult:
    """Run one detector (RED-A, RED-U or RED-P) on a classifier with clean detection images (x, y).

    RED-U is RED-A with w frozen uniform; RED-P's single-source problems make the weighting irrelevant. The
    config's `weighting` is set from the method. RED-A' is RED-A on 2 images per class (`detection_images`).
    `snapshot_every` keeps the patterns along the way (see `estimate_patterns`).
    """
    config = config or LREDConfig()
    check_model_images(model, x, "detection images")
    num_classes = num_classes_of(model, num_classes, input_shape=tuple(x.shape[1:]))  # must match the model's logits
    check_labels(y, len(x), num_classes)
    targets, sources = estimation_problems(method, num_classes)
    config = LREDConfig(**{**asdict(config), "weighting": "anneal" if method == "RED-A" else "uniform"})
    estimation = estimate_patterns(model, x, y, targets, sources, config, snapshot_every=snapshot_every,
                                   progress=progress)
    statistics = 1.0 / estimation.norms.double().clamp(min=1e-12)
    p_value, gamma = order_statistic_test(statistics, free_location=config.free_location)
    top = int(statistics.argmax())
    per_class = torch.bincount(y, minlength=num_classes)
    return DetectionResult(method=method, p_value=p_value, detected=p_value < config.theta,
                           inferred_target=int(estimation.targets[top]), source_weights=estimation.weights[top],
                           statistics=statistics, gamma=gamma, config=config, images_per_class=int(per_class.min()),
                           estimation=estimation)


def detection_images(images: torch.Tensor, labels: torch.Tensor, per_class: int, num_classes: int, seed: int = 0
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """`per_class` seeded random images of every class (the defender's small clean set, Sec. 4.3: drawn from the
    test set, independent of training). `images` may be uint8 (converted to [0, 1]) or float.

    Raises:
        WorkbenchError: if a class has fewer than `per_class` images.
    """
    check_positive_int(per_class, "per_class")
    check_positive_int(num_classes, "num_classes")
    if isinstance(images, torch.Tensor) and images.dtype == torch.uint8:  # the documented conversion, on the subset
        check_images(images[:1].float() / 255)
        if images.ndim != 4:
            raise WorkbenchError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
    else:
        check_images(images)
    check_labels(labels, len(images), num_classes)
    gen = make_generator(seed)
    chosen = []
    for cls in range(num_classes):
        members = torch.nonzero(labels == cls).flatten()
        if len(members) < per_class:
            raise WorkbenchError(f"class {cls} has {len(members)} images, fewer than the {per_class} per class asked "
                                 "for; lower per_class or use a larger clean set")
        chosen.append(members[torch.randperm(len(members), generator=gen)[:per_class]])
    index = torch.cat(chosen)
    x = images[index]
    return (x.float() / 255 if x.dtype == torch.uint8 else x), labels[index]
