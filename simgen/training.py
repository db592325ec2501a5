"""One training loop for every estimator: ``fit(loss, theta, x, config) -> History``.

The loop knows nothing but ``loss(theta_batch, x_batch) -> scalar``. It holds out a seeded
validation split, runs Adam over shuffled in-memory minibatches (plain tensor slicing: no
DataLoader, whose per-batch collation dominates small-model training on CPU), clips the
gradient norm, evaluates the validation loss in large chunks without gradients, stops when
it has not improved for ``patience`` epochs and restores the best weights. Given a
:class:`~simgen.streaming.Stream` instead of tensors (``fit(loss, stream=...)``), the same
loop takes its validation set and minibatches from the stream's fixed blocks and shuffle
buffer.
"""

from __future__ import annotations

import copy
import math
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .errors import ConfigError, ConvergenceWarning
from .stopping import GROUPS, Batch, GainTest, unit_losses
from .stopping import mean_loss as _mean_loss

if TYPE_CHECKING:
    from .streaming import Stream

__all__ = ["TrainConfig", "History", "fit", "make_config"]

#: Devices where Adam runs as one fused kernel (torch >= 2.4 on CPU).
FUSED_ADAM_DEVICES = ("cpu", "cuda")

#: Validation rows per network call; from a stream, at most ``EVAL_BYTES`` of x a call (1,048
#: rows of 1,000 float32), so that the call's activations stay small beside the stream's.
EVAL_ROWS, EVAL_BYTES = 4096, 4 << 20


@dataclass(frozen=True)
class TrainConfig:
    """Validated training options (also accepted as keyword arguments by every ``fit``).

    Attributes:
        batch_size: Minibatch size.
        learning_rate: Adam's step size.
        max_epochs: Upper bound on passes over the training set.
        patience: Training stops after exactly this many epochs in a row without a new best
            validation loss that ``min_gain_se`` counts (once ``min_epochs``/``min_steps``
            are done). The default 20 counts
            as sbi's ``stop_after_epochs=20`` does (sbi stops when its epochs-since-
            improvement counter, reset to 0 on an improvement, reaches 20), so the two
            libraries stop alike in the bake-off (``benchmarks/RESULTS.md``).
        validation_fraction: Share of simulations held out for early stopping, in (0, 0.5].
        clip_grad_norm: Gradient-norm clipping threshold (``None`` disables).
        weight_decay: Adam's L2 penalty.
        lr_decay: Multiply the learning rate by this factor after every ``max(patience // 2,
            1)`` epochs in a row without improvement (never on an improving epoch; 1.0
            disables).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``...
        seed: Seeds the initialisation, the split and the shuffling (``None``: random).
        progress: Show a progress bar over epochs; ``None`` (the default) shows one only
            when stderr is a terminal, so logs and pipes get no carriage-return updates.
        min_epochs: Epochs always run before early stopping may trigger.
        min_steps: Optimizer steps always run before early stopping may trigger, whatever
            the epoch count: a floor in steps, where ``min_epochs`` counts passes (1,000
            simulations at batch 256 are 3 steps an epoch). ``max_epochs`` still ends
            training.
        ema: Decay ``b`` of an exponential moving average of the weights,
            ``w_avg <- b * w_avg + (1 - b) * w`` after every step (0 disables). Validation,
            early stopping and the returned weights then use ``w_avg``.
        min_gain_se: ``k``: a new best validation loss restarts the patience count only if
            it is below the last counted one's by more than ``k`` standard errors of the
            paired per-row difference, a one-sided test at level ``1 - Phi(k)`` (maths and
            measurements in :mod:`simgen.stopping`). The learning-rate decay, the weights
            kept (the lowest validation loss's) and so the whole path up to the stop are
            those of ``k = 0``, the default (every new best counts). ``k = 0.5`` cuts
            gaussian_mixture's 1k fits on the report observations by 27% at C2ST within the
            seed spread, but at 10k stops that task early at C2ST 0.551 against 0.536
            (spread 0.012), so the default stays 0 (``benchmarks/results_defaults.md``,
            "A minimum gain for a new best").
    """

    batch_size: int = 256
    learning_rate: float = 1e-3
    max_epochs: int = 1000
    patience: int = 20
    validation_fraction: float = 0.1
    clip_grad_norm: float | None = 5.0
    weight_decay: float = 0.0
    lr_decay: float = 0.5
    device: str = "cpu"
    seed: int | None = 0
    progress: bool | None = None
    min_epochs: int = 1
    min_steps: int = 0
    ema: float = 0.0
    min_gain_se: float = 0.0

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ConfigError(f"TrainConfig: {what}")

        need(
            _is_int(self.batch_size) and self.batch_size >= 1,
            f"batch_size must be a positive integer, got {self.batch_size!r}.",
        )
        need(
            isinstance(self.learning_rate, (int, float)) and 0 < self.learning_rate < 1,
            f"learning_rate must be in (0, 1), got {self.learning_rate!r}.",
        )
        need(
            _is_int(self.max_epochs) and self.max_epochs >= 1,
            f"max_epochs must be a positive integer, got {self.max_epochs!r}.",
        )
        need(
            _is_int(self.min_epochs) and 1 <= self.min_epochs <= self.max_epochs,
            f"min_epochs must be in [1, max_epochs], got {self.min_epochs!r}.",
        )
        need(
            _is_int(self.min_steps) and self.min_steps >= 0,
            f"min_steps must be a non-negative integer, got {self.min_steps!r}.",
        )
        need(
            _is_int(self.patience) and self.patience >= 1,
            f"patience must be a positive integer, got {self.patience!r}.",
        )
        need(
            isinstance(self.validation_fraction, (int, float))
            and 0 < self.validation_fraction <= 0.5,
            f"validation_fraction must be in (0, 0.5], got {self.validation_fraction!r}.",
        )
        need(
            self.clip_grad_norm is None
            or (isinstance(self.clip_grad_norm, (int, float)) and self.clip_grad_norm > 0),
            f"clip_grad_norm must be positive or None, got {self.clip_grad_norm!r}.",
        )
        need(
            isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0,
            f"weight_decay must be >= 0, got {self.weight_decay!r}.",
        )
        need(
            isinstance(self.lr_decay, (int, float)) and 0 < self.lr_decay <= 1,
            f"lr_decay must be in (0, 1], got {self.lr_decay!r}.",
        )
        need(
            isinstance(self.ema, (int, float)) and 0 <= self.ema < 1,
            f"ema must be in [0, 1), got {self.ema!r}.",
        )
        need(
            isinstance(self.min_gain_se, (int, float))
            and not isinstance(self.min_gain_se, bool)
            and 0 <= self.min_gain_se < math.inf,
            f"min_gain_se must be a finite number >= 0 (standard errors), got "
            f"{self.min_gain_se!r}.",
        )
        need(
            self.seed is None or _is_int(self.seed),
            f"seed must be an int or None, got {self.seed!r}.",
        )
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(
                f"TrainConfig: device {self.device!r} is not a torch device "
                "name; use 'cpu' or 'cuda'."
            ) from exc
        if str(self.device).startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(
                "TrainConfig: device='cuda' but torch sees no GPU here; use device='cpu'."
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _decay_every(config: TrainConfig) -> int:
    """Epochs without improvement between learning-rate decays: ``patience // 2``, at least 1."""
    return max(config.patience // 2, 1)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def make_config(config: TrainConfig | None = None, **overrides: Any) -> TrainConfig:
    """A :class:`TrainConfig` from an optional base plus keyword overrides, validated."""
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(
            f"Unknown training option(s) {unknown}; valid options are {sorted(names)}."
        )
    base = asdict(config) if config is not None else {}
    return TrainConfig(**{**base, **overrides})


@dataclass
class History:
    """What happened in training: per-epoch losses, the best epoch, the time taken."""

    train_loss: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)
    best_epoch: int = 0
    best_validation_loss: float = math.inf
    epochs: int = 0
    seconds: float = 0.0
    stopped_early: bool = False
    num_train: int = 0
    num_validation: int = 0
    interrupted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _split(n: int, fraction: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    perm = torch.randperm(n, generator=generator)
    n_val = max(1, int(round(fraction * n)))
    if n - n_val < 1:
        raise ConfigError(
            f"Too few simulations ({n}) to hold out a validation set; simulate "
            "more or lower validation_fraction."
        )
    return perm[n_val:], perm[:n_val]


class _WeightAverage:
    """Exponential moving average of parameters, swapped in and out in place."""

    def __init__(self, params: list[Tensor], decay: float):
        self.params, self.decay, self.steps = params, decay, 0
        self.average = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self) -> None:
        """One step; the decay warms up as :math:`\\min(\\beta, (1+n)/(10+n))` so the
        initial weights are forgotten within the first few dozen steps."""
        self.steps += 1
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        torch._foreach_lerp_(self.average, [p.detach() for p in self.params], 1.0 - decay)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the live and the averaged weights (call twice to restore)."""
        for p, a in zip(self.params, self.average):
            tmp = p.detach().clone()
            p.copy_(a)
            a.copy_(tmp)


def _clip_grad_norm_(params: list[Tensor], max_norm: float) -> None:
    r"""Scale the gradients by :math:`\min(1, c / (\lVert g\rVert_2 + 10^{-6}))`.

    The same update as ``torch.nn.utils.clip_grad_norm_`` (one global 2-norm over all
    gradients), in three foreach kernels without its per-call dispatch and grouping overhead:
    0.37 ms a step for the diffusion net on CPU (7% of a 1,000-simulation fit).
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, (max_norm / (total + 1e-6)).clamp(max=1.0))


def _snapshot(module: nn.Module) -> dict:
    """A detached copy of ``module``'s state: tensor clones, not ``copy.deepcopy``.

    Taken at every validation improvement. For the diffusion net deepcopy's per-object
    reconstruction cost about 3 ms a time, 5% of a 1,000-simulation fit.
    """
    return {
        k: v.detach().clone() if isinstance(v, Tensor) else copy.deepcopy(v)
        for k, v in module.state_dict().items()
    }


class _InMemory:
    """The seeded split of tensors in memory and its shuffled minibatches."""

    def __init__(self, theta, x, extras, config: TrainConfig, g: torch.Generator, device):
        train_idx, val_idx = _split(len(theta), config.validation_fraction, g)
        self.theta_tr, self.x_tr = theta[train_idx].to(device), x[train_idx].to(device)
        self.val = (
            theta[val_idx].to(device),
            x[val_idx].to(device),
            {k: v[val_idx].to(device) for k, v in extras.items()},
        )
        self.extras_tr = {k: v[train_idx].to(device) for k, v in extras.items()}
        self.g, self.device = g, device
        self.num_train, self.num_validation = len(train_idx), len(val_idx)
        self.batch_size = min(config.batch_size, self.num_train)
        self.eval_rows = max(self.batch_size, EVAL_ROWS)  # validation rows per network call

    def batches(self) -> Iterator[Batch]:
        n, bs = self.num_train, self.batch_size
        perm = torch.randperm(n, generator=self.g).to(self.device)
        for i in range(0, n - bs + 1, bs):  # drop the ragged last batch
            idx = perm[i : i + bs]
            yield self.theta_tr[idx], self.x_tr[idx], {k: v[idx] for k, v in self.extras_tr.items()}

    def validation(self) -> Iterator[Batch]:
        yield self.val


class _Streamed:
    """The fixed validation blocks of a :class:`~simgen.streaming.Stream` and its shuffled
    batches (see :mod:`simgen.streaming`)."""

    def __init__(self, stream: Stream, config: TrainConfig, g: torch.Generator, device):
        self.stream, self.g, self.device = stream, g, device
        self.split = stream.split(config.validation_fraction, g)
        share = float(self.split.is_validation.float().mean())
        expected = int(stream.kept * (1 - share)) if stream.kept else config.batch_size
        self.batch_size = max(1, min(config.batch_size, expected))
        # Validation rows per network call: as in memory, but at most EVAL_BYTES of x.
        sample = stream.x_sample
        row = sample[0].nbytes if sample is not None and len(sample) else EVAL_BYTES
        self.eval_rows = max(self.batch_size, min(EVAL_ROWS, EVAL_BYTES // max(row, 1)))
        self.num_train = self.num_validation = 0

    def batches(self) -> Iterator[Batch]:
        stream = self.stream
        for theta, x in stream.train_batches(self.split, self.batch_size, self.g, self.device):
            yield theta, x, {}
        self.num_train = stream.train_rows

    def validation(self) -> Iterator[Batch]:
        for theta, x in self.stream.validation_chunks(self.split):
            yield theta.to(self.device), x.to(self.device), {}
        self.num_validation = self.stream.validation_rows


def fit(
    loss: nn.Module,
    theta: Tensor | None = None,
    x: Tensor | None = None,
    config: TrainConfig | None = None,
    extras: dict[str, Tensor] | None = None,
    *,
    stream: Stream | None = None,
) -> History:
    """Train the parameters of ``loss`` (which owns the estimator) on ``(theta, x)``.

    Args:
        loss: Module with ``loss(theta, x, **extras) -> scalar``; all its parameters are
            trained.
        theta: ``(N, D)`` on any device.
        x: ``(N, *x_shape)``.
        config: Training options; defaults to ``TrainConfig()``.
        extras: More per-simulation tensors ``(N, ...)`` (e.g. ``joint_score``), split,
            shuffled and batched with ``theta`` and passed to ``loss`` by name.
        stream: Instead of ``theta`` and ``x``, a :class:`~simgen.streaming.Stream` (a bank
            or a dataset read in chunks): the validation set is a fixed, seeded set of its
            blocks and each epoch's batches come through its shuffle buffer.

    Returns:
        The :class:`History`; ``loss`` holds the weights of the best validation epoch.
    """
    config = config or TrainConfig()
    device = torch.device(config.device)
    g = torch.Generator().manual_seed(
        config.seed if config.seed is not None else int(torch.seed() % 2**62)
    )
    if (stream is None) == (theta is None or x is None) or (stream is not None and extras):
        raise ConfigError(
            "fit takes either theta and x (with optional extras) or stream=, not both."
        )
    data: _InMemory | _Streamed = (
        _Streamed(stream, config, g, device)
        if stream is not None
        else _InMemory(theta, x, extras or {}, config, g, device)
    )
    loss.to(device)
    params = [p for p in loss.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(
        params,
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
        # One fused kernel for all parameters instead of a Python loop over them: the
        # same update, and ~2-3 ms less per step for a 10-transform MAF on CPU
        # (benchmarks/bench_step.py).
        fused=device.type in FUSED_ADAM_DEVICES or None,
    )
    average = _WeightAverage(params, config.ema) if config.ema > 0 else None
    history = History()
    best_state = _snapshot(loss)
    since_best, since_gain, total_steps = 0, 0, 0  # epochs without a new best, counted one
    chunk = data.eval_rows
    gain_test = GainTest(config.min_gain_se) if config.min_gain_se > 0 else None
    group_rows = -(-data.num_validation // GROUPS) if data.num_validation else chunk
    bar = None
    if config.progress or (config.progress is None and sys.stderr.isatty()):
        from tqdm.auto import tqdm

        bar = tqdm(total=config.max_epochs, desc="training", unit="epoch", leave=False)
    start = time.perf_counter()
    try:
        for epoch in range(config.max_epochs):
            loss.train()
            running, steps = 0.0, 0
            for theta_b, x_b, extras_b in data.batches():
                value = loss(theta_b, x_b, **extras_b)
                for p in params:  # optimizer.zero_grad(set_to_none=True), minus its hooks
                    p.grad = None
                value.backward()
                if config.clip_grad_norm is not None:
                    _clip_grad_norm_(params, config.clip_grad_norm)
                optimizer.step()
                if average is not None:
                    average.update()
                running += value.detach()
                steps += 1
            loss.eval()
            if average is not None:
                average.swap()  # validate (and keep) the averaged weights
            if gain_test is None:
                val = _mean_loss(loss, data.validation(), chunk)
            else:
                units, weights, val = unit_losses(loss, data.validation(), chunk, group_rows)
            history.num_train, history.num_validation = data.num_train, data.num_validation
            history.train_loss.append(float(running) / max(steps, 1))
            history.validation_loss.append(val)
            history.epochs = epoch + 1
            improved = val < history.best_validation_loss
            if improved:
                history.best_validation_loss, history.best_epoch = val, epoch
                best_state = _snapshot(loss)
            since_best = 0 if improved else since_best + 1  # epochs without improvement
            # Patience counts only new bests that beat the last counted one by k se.
            counted = improved and (gain_test is None or gain_test(units, weights))
            since_gain = 0 if counted else since_gain + 1
            if average is not None:
                average.swap()  # back to the live weights to go on training
            total_steps += steps
            # The learning rate decays on stalls even in the warm-up (diffusion's two_moons
            # mean over seeds 0-3 was 0.807 with decay in its first 100 epochs, 0.876 with
            # them undecayed); only stopping waits.
            warm = epoch + 1 < config.min_epochs or total_steps < config.min_steps
            if config.lr_decay < 1 and not improved and since_best % _decay_every(config) == 0:
                for group in optimizer.param_groups:
                    group["lr"] *= config.lr_decay
            if bar is not None:
                bar.update(1)
                bar.set_postfix(val_loss=f"{val:.4f}", best=history.best_epoch)
            if since_gain >= config.patience and not warm:
                history.stopped_early = True
                break
    except KeyboardInterrupt:
        # Keep what was learned: stop cleanly with the best weights so far.
        history.interrupted = True
        warnings.warn(
            f"Training interrupted after {history.epochs} epochs; keeping the best weights so far.",
            ConvergenceWarning,
            stacklevel=2,
        )
    finally:
        if bar is not None:
            bar.close()
    loss.load_state_dict(best_state)
    loss.eval()
    history.seconds = time.perf_counter() - start
    if not math.isfinite(history.best_validation_loss) and not history.interrupted:
        raise ConfigError(
            "Training diverged: the validation loss was never finite. Lower "
            "learning_rate, or check x for extreme values."
        )
    if not (history.stopped_early or history.interrupted):
        warnings.warn(
            f"Training stopped at max_epochs={config.max_epochs} while the validation "
            "loss was still improving; raise max_epochs for a better fit.",
            ConvergenceWarning,
            stacklevel=2,
        )
    return history
