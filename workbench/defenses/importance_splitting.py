"""Importance splitting (adaptive multilevel splitting) for rare-event probabilities, batched over problems.

Spec: [REStore] App. E and Alg. 1, after [Cerou2012] and [Tit2021]; see also
docs/implementation.md#restore-importance-splitting. Given a distribution L (a `generate`
function), an L-invariant, reversible `kernel` with a strength s, and a `score` function, it estimates
rho_tau = P(score(X) > tau) for an increasing series of levels tau_1 < tau_2 < ... (Eqs. 11-14):

* n particles are drawn from L and scored (App. E, "Initialization");
* level j: tau_j is the (n - k)-th lowest score; the particles at or below it are killed and
  rho_{tau_j} = rho_{tau_{j-1}} * K_j / n with K_j the survivors (K_j = k without ties, so rho_{tau_j} = (k/n)^j);
* each killed particle is replaced by a clone of a survivor drawn uniformly (Alg. 1 line 3), which then takes T
  kernel passes, a proposal being kept only if its score exceeds tau_j (Alg. 1 lines 4-8);
* the strength s shrinks to decay * s when too few proposals are accepted and grows to s / decay when many are
  (Alg. 1 line 10);
* it stops after J_max levels, or once tau_j reaches an optional target level tau.

Deviations and unpublished details, each a named setting:
* Ties (hard-label scores take only m + 1 values): the survivors are the particles *strictly* above tau_j, so K_j
  can be smaller than k and the estimate multiplies by K_j / n, the generalised estimator of adaptive multilevel
  splitting that stays unbiased with discrete scores. A level where every particle ties (K_j = 0) ends the run
  ("saturated": no particle can be split further).
* The strength is updated after every kernel pass from that pass's acceptance rate (the paper's "decay such that
  the last pass modifies a single pixel" implies a per-pass update); the acceptance band that counts as "too
  low" / "too high" is not published: `accept_low` / `accept_high` (0.2 / 0.5 by default).
* Passes are batched: all clones of a level move at once (one score call per pass), instead of clone after clone.
* With a target level: when tau_j >= tau, the run stops and the last factor is the fraction of particles whose
  score exceeds tau (the standard last step of adaptive splitting).

Every problem (e.g. one per class of a classifier) runs independently but in the same tensors: one `score` call per
pass for all problems still running, on any device. Same seed, same result.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from workbench.core.runtime import make_generator
from workbench.core.validation import WorkbenchError, check_fraction, check_positive, check_positive_int

STOP_REASONS = ("running", "max_levels", "target", "saturated")


class Generate(Protocol):
    def __call__(self, num_problems: int, num: int, generator: torch.Generator) -> torch.Tensor:
        """Draw `num` particles from L for each problem -> (num_problems, num, *shape)."""


class Kernel(Protocol):
    def __call__(self, x: torch.Tensor, strength: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One L-invariant move of every particle: x (B, m, *shape), strength (B,) -> (B, m, *shape)."""


class Score(Protocol):
    def __call__(self, x: torch.Tensor, problems: torch.Tensor) -> torch.Tensor:
        """Scores of particles x (B, m, *shape) of the problems `problems` (B,) (indices into all problems)
        -> (B, m)."""


@dataclass(frozen=True)
class SplittingConfig:
    """Settings of importance splitting ([REStore] Sec. IV-B: n = 500, k = 250, T = 30, J_max = 40, s = 1).

    Args:
        particles: n.
        survivors: k, the particles kept at each level (k / n is the conditional probability per level).
        passes: T, kernel passes applied to every clone (Alg. 1 line 4).
        max_levels: J_max.
        strength: the kernel's initial strength s.
        decay: s -> decay * s when the acceptance rate of a pass is below `accept_low`, s -> s / decay when it is
            above `accept_high` (Alg. 1 line 10). REStore's sparse setups set it so that T decays take s d alpha
            redrawn components down to one (`decay_to_one_component`).
        accept_low, accept_high: the acceptance band (unpublished; see the module docstring).
        max_strength: upper bound on s (1 for kernels whose strength is a probability); None = unbounded.
        target_level: stop a problem once its level reaches this tau; None = always run `max_levels` levels.
    """

    particles: int = 500
    survivors: int = 250
    passes: int = 30
    max_levels: int = 40
    strength: float = 1.0
    decay: float = 0.9
    accept_low: float = 0.2
    accept_high: float = 0.5
    max_strength: float | None = None
    target_level: float | None = None

    def __post_init__(self) -> None:
        check_positive_int(self.particles, "particles")
        check_positive_int(self.survivors, "survivors")
        if not 0 < self.survivors < self.particles:
            raise WorkbenchError(f"survivors (k = {self.survivors}) must be between 1 and particles - 1 "
                                 f"(n = {self.particles}); the paper uses k = n / 2")
        check_positive_int(self.passes, "passes")
        check_positive_int(self.max_levels, "max_levels")
        check_positive(self.strength, "strength")
        check_fraction(self.decay, "decay", allow_one=False)
        check_fraction(self.accept_low, "accept_low", allow_zero=True)
        check_fraction(self.accept_high, "accept_high")
        if self.accept_low >= self.accept_high:
            raise WorkbenchError(f"accept_low ({self.accept_low}) must be below accept_high ({self.accept_high})")
        if self.max_strength is not None:
            check_positive(self.max_strength, "max_strength")
            if self.strength > self.max_strength:
                raise WorkbenchError(f"strength {self.strength} exceeds max_strength {self.max_strength}")
        if self.target_level is not None and (isinstance(self.target_level, bool) or not isinstance(
                self.target_level, (int, float)) or not math.isfinite(self.target_level)):
            raise WorkbenchError(f"target_level must be a finite score level or None, got {self.target_level!r}")


def decay_to_one_component(passes: int, strength: float, components: float) -> float:
    """[REStore] Sec. IV-B's decay: after `passes` decays, a kernel that redraws `strength * components` components
    on average (Eq. 16: s d alpha_def) redraws a single one, i.e. decay ** passes * strength * components = 1."""
    check_positive_int(passes, "passes")
    check_positive(strength, "strength")
    check_positive(components, "components")
    if strength * components <= 1:
        raise WorkbenchError(f"the kernel redraws {strength * components:g} components at strength {strength}: "
                             "there is nothing to decay towards one component")
    return (strength * components) ** (-1.0 / passes)


@dataclass
class SplittingResult:
    """The levels, estimates and particles of importance splitting on B problems (L levels run at most).

    Level rows a problem did not run are NaN (tau, log_rho, acceptance, strength) or 0 (survivor counts).
    """

    levels: torch.Tensor  # (L, B) tau_j
    log_rho: torch.Tensor  # (L, B) natural log of the estimate of P(score > tau_j)
    survivor_counts: torch.Tensor  # (L, B) K_j, particles strictly above tau_j
    acceptance: torch.Tensor  # (L, B) mean acceptance rate over the level's T passes (NaN for the last level)
    strength: torch.Tensor  # (L, B) s after the level's passes
    levels_run: torch.Tensor  # (B,) J
    stop_reason: list[str]  # per problem, one of STOP_REASONS
    target_log_rho: torch.Tensor  # (B,) log P(score > target_level) (NaN without a target or if not reached)
    particles: torch.Tensor  # (B, n, *shape) the final population
    scores: torch.Tensor  # (B, n) their scores
    survivors: torch.Tensor  # (B, n) bool: the particles above the last level (the rare event's realisations)
    evaluations: torch.Tensor  # (B,) particles scored per problem
    seconds: float
    config: SplittingConfig

    def curve(self, problem: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The tau -> log10 rho map of one problem: (levels (J,), log10 rho (J,)), without a last level at which
        every particle tied (rho = 0 there: nothing scores above the top score)."""
        run = int(self.levels_run[problem])
        levels, log_rho = self.levels[:run, problem], self.log_rho[:run, problem]
        finite = torch.isfinite(log_rho)
        return levels[finite], log_rho[finite] / math.log(10)

    def realisations(self, problem: int) -> torch.Tensor:
        """The particles of one problem above its last level -> (K_J, *shape)."""
        return self.particles[problem][self.survivors[problem]]

    TENSORS = ("levels", "log_rho", "survivor_counts", "acceptance", "strength", "levels_run", "target_log_rho",
               "particles", "scores", "survivors", "evaluations")

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors of this result (to store as safetensors; `from_tensors` rebuilds it)."""
        return {name: getattr(self, name) for name in self.TENSORS}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], summary: dict[str, Any]) -> SplittingResult:
        """Rebuild a result from `tensors()` and `summary()`."""
        return cls(**{name: tensors[name] for name in cls.TENSORS}, stop_reason=list(summary["stop_reason"]),
                   seconds=float(summary["seconds"]), config=SplittingConfig(**summary["config"]))

    def summary(self) -> dict[str, Any]:
        """Everything but the particles, as JSON-ready lists (NaN -> None)."""
        def finite(values: list[float]) -> list[float | None]:
            return [v if math.isfinite(v) else None for v in values]

        def plain(t: torch.Tensor) -> list[list[float | None]]:  # (L, B) -> per problem, per level
            return [finite(row) for row in t.T.tolist()]
        return {"levels": plain(self.levels), "log10_rho": plain(self.log_rho / math.log(10)),
                "survivor_counts": self.survivor_counts.T.tolist(), "acceptance": plain(self.acceptance),
                "strength": plain(self.strength), "levels_run": self.levels_run.tolist(),
                "stop_reason": self.stop_reason, "evaluations": self.evaluations.tolist(),
                "target_log10_rho": finite((self.target_log_rho / math.log(10)).tolist()),
                "seconds": self.seconds, "config": asdict(self.config)}


def _positions(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of a (B, n) bool mask: the indices of its True entries first (B, n), and their count (B,)."""
    order = torch.argsort(mask.to(torch.int8), dim=1, descending=True, stable=True)
    return order, mask.sum(dim=1)


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, n, *shape) at per-row indices (B, m) -> (B, m, *shape)."""
    expanded = index.reshape(*index.shape, *([1] * (x.dim() - 2))).expand(*index.shape, *x.shape[2:])
    return torch.gather(x, 1, expanded)


def _scatter(x: torch.Tensor, index: torch.Tensor, values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """x (B, n, *shape) with x[b, index[b, i]] = values[b, i] where valid[b, i]."""
    out = x.clone()
    rows = torch.arange(x.shape[0], device=x.device)[:, None].expand_as(index)
    out[rows[valid], index[valid]] = values[valid]
    return out


def importance_splitting(generate: Generate, kernel: Kernel, score: Score, *, num_problems: int,
                         config: SplittingConfig = SplittingConfig(), seed: int = 0, device: str | torch.device = "cpu",
                         progress: bool = False) -> SplittingResult:
    """Run importance splitting (App. E, Alg. 1) on `num_problems` independent problems at once.

    Args:
        generate: draws particles from L (App. G "generator").
        kernel: an L-invariant move with strength s (App. G, e.g. Eq. 15 or 16).
        score: the score of each particle (Eq. 4 for REStore); larger is rarer.
        num_problems: B, e.g. the classes of a classifier.
        config: n, k, T, J_max, s and its control.
        seed: seeds the generator that draws particles, clones and kernel moves.
        device: where particles live (`generate` must draw them there).
        progress: show a progress bar over levels.

    Returns:
        A `SplittingResult`: per problem the tau -> rho map, the final particles and the survivors above the last
        level, the acceptance and strength traces and the number of particles scored.
    """
    check_positive_int(num_problems, "num_problems")
    cfg, n = config, config.particles
    gen = make_generator(seed, device)
    start = time.time()
    everyone = torch.arange(num_problems, device=device)

    x = generate(num_problems, n, gen)
    if x.shape[:2] != (num_problems, n):
        raise WorkbenchError(f"generate returned shape {tuple(x.shape)}; expected ({num_problems}, {n}, ...)")
    scores = _checked_scores(score(x, everyone), (num_problems, n))
    evaluations = torch.full((num_problems,), n, dtype=torch.long)
    strength = torch.full((num_problems,), float(cfg.strength), device=device)

    nan = torch.full((cfg.max_levels, num_problems), float("nan"))
    levels, log_rho, acceptance, strength_trace = nan.clone(), nan.clone(), nan.clone(), nan.clone()
    survivor_counts = torch.zeros(cfg.max_levels, num_problems, dtype=torch.long)
    target_log_rho = torch.full((num_problems,), float("nan"))
    stop_reason = ["running"] * num_problems
    running = torch.ones(num_problems, dtype=torch.bool)
    current_log_rho = torch.zeros(num_problems, dtype=torch.float64)
    last_level = torch.full((num_problems,), -math.inf, dtype=torch.float64)

    for level in tqdm(range(cfg.max_levels), desc="levels", disable=not progress):
        active = torch.nonzero(running).flatten()
        # tau_j: the (n - k)-th lowest score; survivors are strictly above it (App. E; ties: module docstring)
        tau = torch.sort(scores[active], dim=1).values[:, n - cfg.survivors - 1]
        alive = scores[active] > tau[:, None]
        count = alive.sum(dim=1).cpu()
        tau_cpu = tau.double().cpu()
        levels[level, active] = tau_cpu.float()
        survivor_counts[level, active] = count
        if cfg.target_level is not None:
            reached = tau_cpu >= cfg.target_level
            above = (scores[active] > cfg.target_level).sum(dim=1).cpu()
            final = current_log_rho[active] + torch.log(above.double() / n)
            target_log_rho[active[reached]] = final[reached].float()
        current_log_rho[active] += torch.log(count.double() / n)
        log_rho[level, active] = current_log_rho[active].float()
        last_level[active] = tau_cpu

        reached = (tau_cpu >= cfg.target_level if cfg.target_level is not None
                   else torch.zeros(len(active), dtype=torch.bool))
        saturated = count == 0
        last = level == cfg.max_levels - 1
        for problem, hit, flat in zip(active.tolist(), reached.tolist(), saturated.tolist(), strict=True):
            reason = "target" if hit else "saturated" if flat else "max_levels" if last else None
            if reason is not None:
                stop_reason[problem] = reason
                running[problem] = False
        moving = ~(reached | saturated)
        if last or not moving.any():
            break

        # Refresh (Alg. 1): clone uniformly drawn survivors into the killed slots, then T kernel passes
        problems = active[moving.to(active.device)]
        rows_alive = alive[moving.to(alive.device)]
        level_tau = tau[moving.to(tau.device)]
        dead_order, dead_count = _positions(~rows_alive)
        alive_order, alive_count = _positions(rows_alive)
        slots = int(dead_count.max())
        dead_index = dead_order[:, :slots]
        valid = torch.arange(slots, device=device)[None, :] < dead_count[:, None]
        draw = torch.rand(len(problems), slots, generator=gen, device=device)
        parent = torch.gather(alive_order, 1, (draw * alive_count[:, None]).long())
        clones = _gather(x[problems], parent)
        clone_scores = torch.gather(scores[problems], 1, parent)
        s = strength[problems]
        accepted_sum = torch.zeros(len(problems), device=device)
        for _ in range(cfg.passes):
            proposal = kernel(clones, s, gen)
            proposal_scores = _checked_scores(score(proposal, problems), tuple(valid.shape))
            accept = (proposal_scores > level_tau[:, None]) & valid
            clones = torch.where(accept.reshape(*accept.shape, *([1] * (clones.dim() - 2))), proposal, clones)
            clone_scores = torch.where(accept, proposal_scores, clone_scores)
            rate = accept.sum(dim=1) / dead_count
            accepted_sum += rate
            s = torch.where(rate < cfg.accept_low, s * cfg.decay, torch.where(rate > cfg.accept_high, s / cfg.decay, s))
            if cfg.max_strength is not None:
                s = s.clamp(max=cfg.max_strength)
        strength[problems] = s
        evaluations[problems.cpu()] += cfg.passes * dead_count.cpu()
        acceptance[level, problems.cpu()] = (accepted_sum / cfg.passes).float().cpu()
        strength_trace[level, problems.cpu()] = s.float().cpu()
        x = x.clone()
        x[problems] = _scatter(x[problems], dead_index, clones, valid)
        scores = scores.clone()
        scores[problems] = _scatter(scores[problems], dead_index, clone_scores, valid)

    levels_run = (~torch.isnan(levels)).sum(dim=0)
    survivors = _realisations(scores, last_level, stop_reason, cfg.target_level)
    run = int(levels_run.max())
    return SplittingResult(levels=levels[:run], log_rho=log_rho[:run], survivor_counts=survivor_counts[:run],
                           acceptance=acceptance[:run], strength=strength_trace[:run],
                           levels_run=levels_run, stop_reason=stop_reason, target_log_rho=target_log_rho,
                           particles=x, scores=scores, survivors=survivors, evaluations=evaluations,
                           seconds=time.time() - start, config=cfg)


def _realisations(scores: torch.Tensor, last_level: torch.Tensor, stop_reason: list[str],
                  target_level: float | None) -> torch.Tensor:
    """(B, n) bool: the final particles that realise each problem's rarest event: above the target level if it was
    reached, at the top score if every particle tied there (saturated), else strictly above the last level."""
    threshold = last_level.to(scores.device, scores.dtype)[:, None]
    out = scores > threshold
    for problem, reason in enumerate(stop_reason):
        if reason == "saturated":
            out[problem] = scores[problem] >= threshold[problem]
        elif reason == "target":
            out[problem] = scores[problem] > target_level
    return out


def _checked_scores(scores: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    if tuple(scores.shape) != shape:
        raise WorkbenchError(f"score returned shape {tuple(scores.shape)}; expected {shape} (one score per particle)")
    if not torch.isfinite(scores).all():
        raise WorkbenchError("score returned NaN or infinite values; scores must be finite")
    return scores


# --- Search distributions L and their kernels (App. G) ---------------------------------------------------------

#: delta_0 of the sparse IID distribution (App. G): "this component is not replaced". The paper writes -inf; NaN
#: keeps any accidental arithmetic on an unreplaced component loud.
UNCHANGED = float("nan")


class GaussianPrior:
    """L = N(0, I_d) (App. G, Gaussian generator) with the L-invariant kernel of Eq. 15:
    kernel(x, s) = (x + s N) / sqrt(1 + s^2), N ~ N(0, I_d)."""

    def __init__(self, shape: tuple[int, ...], device: str | torch.device = "cpu") -> None:
        if not isinstance(shape, (tuple, list)) or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0
                                                           for s in shape):
            raise WorkbenchError(f"shape must be a tuple of positive integers (one particle's shape), got {shape!r}")
        self.shape = tuple(shape)
        self.device = torch.device(device)

    def generate(self, num_problems: int, num: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn((num_problems, num, *self.shape), generator=generator, device=self.device)

    def kernel(self, x: torch.Tensor, strength: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        s = strength.reshape(-1, *([1] * (x.dim() - 1)))
        noise = torch.randn(x.shape, generator=generator, device=x.device)
        return (x + s * noise) / torch.sqrt(1 + s * s)


class SparseIIDPrior:
    """L = Lambda^d (App. G, IID generator): component i is a draw from V with probability rate_i (alpha_def where
    the search space allows it, 0 for frozen components), else delta_0 (`UNCHANGED`).

    The kernel (Eq. 16) redraws each component from Lambda with probability s (the strength, at most 1), so on
    average s * sum(rate) components take a new value from V. Deviation: Eq. 16's third term keeps x where the
    redraw is delta_0, under which a replaced component could never return to delta_0 and Lambda^d would not be
    invariant, which App. E requires of every kernel; here a redraw of delta_0 resets the component.

    Args:
        rate: (*shape) probability that a component is replaced (alpha_def, or 0 where the search space is frozen).
        draw_values: draw_values(shape, generator) -> values from V, on `rate`'s device (e.g. U(0, 1) for PI).
    """

    def __init__(self, rate: torch.Tensor,
                 draw_values: Callable[[tuple[int, ...], torch.Generator], torch.Tensor]) -> None:
        if not isinstance(rate, torch.Tensor):
            raise WorkbenchError(f"rate must be a tensor of probabilities, got {type(rate).__name__}")
        if not ((rate >= 0) & (rate <= 1)).all():
            raise WorkbenchError("rate must hold probabilities in [0, 1]")
        if not (rate > 0).any():
            raise WorkbenchError("rate is 0 everywhere: the search space is empty")
        self.rate = rate
        self.draw_values = draw_values

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.rate.shape)

    def _draw(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        replaced = torch.rand(shape, generator=generator, device=self.rate.device) < self.rate
        values = self.draw_values(shape, generator)
        return torch.where(replaced, values, torch.full_like(values, UNCHANGED))

    def generate(self, num_problems: int, num: int, generator: torch.Generator) -> torch.Tensor:
        return self._draw((num_problems, num, *self.shape), generator)

    def kernel(self, x: torch.Tensor, strength: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        s = strength.clamp(max=1.0).reshape(-1, *([1] * (x.dim() - 1)))
        redrawn = torch.rand(x.shape, generator=generator, device=x.device) < s
        return torch.where(redrawn, self._draw(tuple(x.shape), generator), x)
