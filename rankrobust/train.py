"""The training loop: Adam, batching, sampled (or in-batch) negatives, early stopping.

Read it top to bottom: `TrainData` is what a run trains on, `make_step`
builds the per-batch step (optionally compiled), `Trainer.epoch` runs one
pass, `fit` runs the epochs and calls the probes (`rankrobust.probes`).  All
batches stay on the device; the epoch's sums (loss, same-user group size) are
accumulated on the device and read once per epoch, which is the only host sync
besides validation.
"""
from __future__ import annotations

import copy
import functools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from rankrobust.batching import BATCHINGS, group_size_mean
from rankrobust.config import RunConfig
from rankrobust.data.interactions import Interactions
from rankrobust.data.popularity import item_popularity
from rankrobust.evaluate import EvalResult, Evaluator, most_popular_baseline, sample_users
from rankrobust.loss_state import LossState, make_loss_state
from rankrobust.losses import LOSSES, LossBatch, LossEntry, apply_loss, score_only_entry
from rankrobust.models import Recommender, build_model
from rankrobust.probes import BatchView, Probe, StopTraining
from rankrobust.sampling import build_sampler, sample_with_fn_mask
from rankrobust.scoring import PositivesBitmap, choose_scorer, column_scorer, penalised_items, score_batch


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; otherwise the named device (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return device


@dataclass
class TrainData:
    """What one run trains and evaluates on.

    ``train``: pairs the model learns from (noisy positives included, held-out
    false negatives removed); ``seen``: everything masked at evaluation
    (original training positives ∪ injected); ``valid`` / ``test``: clean
    ground truth; ``fn_pool``: false-negative pool (or None); ``leaky``: valid is test;
    ``noisy``: bool [train.nnz] in ``train``'s CSR order, True for injected
    noisy positives (None when none were injected).
    """

    train: Interactions
    seen: Interactions
    valid: Interactions
    test: Interactions
    fn_pool: Interactions | None = None
    leaky: bool = False
    noisy: np.ndarray | None = None


@dataclass
class FitResult:
    """Outcome of `fit`: the model holding the best weights, and its logs."""

    model: Recommender
    best_epoch: int
    best_valid: float
    history: pd.DataFrame
    valid: EvalResult | None
    test: EvalResult
    seconds: float
    stopped_early: bool
    extra: dict[str, Any] = field(default_factory=dict)
    #: why training ended: one of `STOP_REASONS`
    stop_reason: str = "epoch_cap"


#: why `fit` stopped training: patience ran out on validation, ``train.epochs`` was reached, ``train.time_limit``
#: ran out, or a probe asked to stop (`rankrobust.probes.StopTraining`, e.g. a tuner pruning a hopeless trial)
STOP_REASONS = ("early_stopping", "epoch_cap", "time_limit", "stopped_by_probe")


def make_step(model: Recommender, loss: LossEntry | Callable, loss_kwargs: dict[str, Any], l2: float, *,
              negatives: str = "sampled", scorer: str = "gather", fused: bool = True,
              positives: PositivesBitmap | None = None,
              loss_state: LossState | None = None, product_dtype: torch.dtype | None = None,
              popularity: torch.Tensor | None = None, with_negatives: bool = False,
              ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]:
    """The differentiable part of one batch: a `LossBatch` → loss (+ L2, + the backbone's auxiliary loss).

    Returns ``step(users [B], pos [B], neg [B, M]) -> (loss scalar, pos_scores [B])``;
    with ``with_negatives`` ``(loss, pos_scores, neg_scores [B, M'], neg_mask [B, M'] or None)``,
    the scores as the loss received them (for `rankrobust.probes.BatchView`); all three are None when the
    loss read no score (they are never computed for it).
    ``loss`` is the registered `LossEntry` (what it reads, how it is called:
    `rankrobust.losses.apply_loss`), or a bare score-only loss function
    (called on the scores, ``users`` passed).  The step hands the loss one
    `LossBatch`; its scores come lazily from `rankrobust.scoring.score_batch`: ``negatives`` is
    ``sampled`` (the ids ``neg``, scored by the resolved ``scorer``: gather,
    sparse or dense, `rankrobust.scoring.column_scorer`; ``fused=False``: the
    gather path by plain autograd), ``in_batch`` (the other users' positives of the batch: the [B, B]
    matrix, its diagonal and each user's own other positives masked for every
    loss, since neither is a negative; so SL on in-batch negatives is the
    softmax over the at most B − 1 other users' positives, and the in-batch
    cross-entropy is ``loss.include_pos=true``) or ``all`` (every item but the
    positive, and but the user's other training positives when ``positives``
    is given).  A row left without negatives has a negative term of 0
    (`rankrobust.losses`).  ``loss_state`` (`rankrobust.loss_state`) adds its
    per-batch keyword tensors to the loss's.  ``product_dtype`` (bfloat16 with
    ``train.bf16`` on CPU) is the precision of the dense and all-items matrix products.
    ``popularity`` [n_items] is the batch's ``popularity`` field (needed only by a loss that reads it).
    """
    columns = column_scorer(scorer, product_dtype, fused)  # read for sampled negatives only
    auxiliary = type(model).extra_loss is not Recommender.extra_loss  # MF, LightGCN: none (no [B, 1 + M] ids built)
    entry = loss if isinstance(loss, LossEntry) else score_only_entry(loss)
    final = model.final_embeddings if "final_embeddings" in entry.reads else None
    sampled = negatives == "sampled"

    def step(users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, ...]:
        U, I = model.score_tables()
        batch = LossBatch(users, pos, tables=(U, I), popularity=popularity, final_embeddings=final,
                          reads=entry.reads,
                          scores=lambda: score_batch(model, U, I, users, pos, neg, negatives=negatives, columns=columns,
                                                     positives=positives, product_dtype=product_dtype))
        kwargs = loss_kwargs if loss_state is None else {
            **loss_kwargs, **loss_state.batch_kwargs(users, pos, batch.scores().neg_items)}
        value = apply_loss(entry, batch, kwargs)
        if l2 > 0 or auxiliary:
            items = penalised_items(pos, neg, sampled)
            if l2 > 0:
                value = value + l2 * model.l2_penalty(users, items)
            extra = model.extra_loss(users, items) if auxiliary else None
            if extra is not None:
                value = value + extra
        s = batch.scored
        if with_negatives:
            return (value, None, None, None) if s is None else (value, s.pos, s.neg, s.neg_mask)
        return value, None if s is None else s.pos

    return step


def make_adam(params, lr: float) -> torch.optim.Optimizer:
    """Adam with the fused kernel where this torch build has it (7x faster on CPU), else multi-tensor."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr, foreach=True)


class _FallbackStep:
    """A compiled step that falls back to eager, once and with a warning, if compilation fails.

    ``torch.compile`` compiles lazily at the first call, so failures (no C++
    compiler, an unsupported op) surface there; the step then runs eagerly.
    """

    def __init__(self, step: Callable, device: torch.device) -> None:
        self.eager, self.device = step, device
        self.compiled: Callable | None = torch.compile(step, dynamic=False)

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except Exception as err:  # compile is an optimisation, never a requirement
                import warnings

                warnings.warn(f"torch.compile failed on {self.device} ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}); training without it")
                self.compiled = None
        return self.eager(*args)


def maybe_compile(step: Callable, enabled: bool, device: torch.device) -> Callable:
    """``torch.compile`` the step when asked, with a clean fallback to eager execution."""
    return _FallbackStep(step, device) if enabled else step


class Trainer:
    """Model, optimiser, sampler and step for one run; `epoch()` trains one pass.

    Split from `fit` so benchmarks can time epochs and evaluations alone.
    """

    def __init__(self, cfg: RunConfig, data: TrainData, device: torch.device) -> None:
        tc = cfg.train
        self.cfg, self.data, self.device = cfg, data, device
        torch.manual_seed(tc.seed)  # dropout draws from the global generator
        self.model = build_model(cfg.model.name, data.train, cfg.model.options, seed=tc.seed, device=device,
                                 fused=tc.fast)
        self.sampler = build_sampler(tc.sampler, train=data.train, options=tc.sampler_options, device=device,
                                     fn_pool=data.fn_pool, fn_prob=cfg.noise.neg_prob)
        self.loss_state = make_loss_state(cfg.loss.options, data.train, device)
        groups = [{"params": list(self.model.parameters()), "lr": tc.lr}]
        if self.loss_state is not None:
            groups += self.loss_state.param_groups(tc.lr)
        self.optimizer = make_adam(groups, tc.lr)
        self.order = BATCHINGS.entry(tc.batching).target
        self.batching_options = tc.batching_options
        self.probes: list[Probe] = []
        negatives = getattr(self.sampler, "negatives", "sampled")  # optional for a registered sampler
        #: ``train.scorer`` resolved for this run (sampled negatives only; recorded in metrics.json)
        self.scorer = choose_scorer(tc.scorer, n_items=data.train.n_items, num_negatives=self.sampler.num_negatives or 0,
                                    dim=self.model.dim, batch_size=tc.batch_size, device=device,
                                    bf16=tc.bf16) if negatives == "sampled" else None
        positives = (PositivesBitmap(data.train, device) if negatives == "all" and self.sampler.mask_positives
                     else None)
        product_dtype = torch.bfloat16 if tc.bf16 and device.type == "cpu" else None
        loss = LOSSES.entry(cfg.loss.name)
        popularity = (torch.as_tensor(item_popularity(data.train, "trained"), dtype=torch.float32, device=device)
                      if "popularity" in loss.reads else None)
        build_step = functools.partial(make_step, self.model, loss, cfg.loss.kwargs(), tc.l2,
                                       negatives=negatives,
                                       scorer=self.scorer.scorer if self.scorer is not None else "gather",
                                       fused=tc.fast, positives=positives,
                                       loss_state=self.loss_state, product_dtype=product_dtype,
                                       popularity=popularity)
        self.step = maybe_compile(build_step(), tc.compile, device)
        #: the step of the epochs that probes watch (`rankrobust.probes.BatchView`): it also returns the negative
        #: scores, and it is never compiled, since a hook on an output of a compiled graph never receives the
        #: gradient that flows inside it (it is called with None)
        self.watched_step = build_step(with_negatives=True)
        self.generator = torch.Generator(device=device).manual_seed(tc.seed)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=tc.bf16 and device.type == "cuda")
        self.users, self.items = (torch.as_tensor(a, device=device) for a in data.train.to_pairs())
        self.batch_size = tc.batch_size
        self.n_batches = math.ceil(self.users.shape[0] / tc.batch_size)
        #: the validation users: a fixed, seeded sample when ``train.valid_users`` asks for one, else all
        self.valid_sample = (sample_users(data.valid, tc.valid_users, cfg.data.split_seed)
                             if tc.valid_users is not None else None)
        self.validator = Evaluator(data.valid, exclude=[data.seen], ks=tc.ks, chunk_size=tc.eval_chunk,
                                   device=device, users=self.valid_sample)
        exclude = [data.seen] if data.leaky else [data.seen, data.valid]
        self.tester = Evaluator(data.test, exclude=exclude, ks=tc.ks, chunk_size=tc.eval_chunk, device=device)

    def epoch(self, on_batch: Callable[[], None] | None = None) -> torch.Tensor:
        """One pass over the training pairs in the order of ``train.batching``.

        Returns a device tensor [2]: the mean batch loss and the mean same-user
        group size per pair (docs/PROTOCOLS.md §9), read by the caller in one sync.
        ``on_batch`` is called after each batch (a progress bar; it must not read device values).
        """
        self.model.train()
        order = self.order(self.users, self.batching_options, self.generator)
        total = torch.zeros((), device=self.device)
        group_pairs = torch.zeros((), device=self.device)
        watchers = [p for p in self.probes if p.wants_batches]
        negative_side = any(getattr(p, "wants_negatives", False) for p in watchers)
        step = self.watched_step if watchers else self.step
        fn_mask = None
        for b in range(self.n_batches):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            users, pos = self.users[idx], self.items[idx]
            if negative_side:  # the same draws, and which slots hold a mixed-in false negative
                neg, fn_mask = sample_with_fn_mask(self.sampler, users, pos, self.generator)
            else:
                neg = self.sampler(users, pos, self.generator)
            with self.autocast:
                loss, pos_scores, *negatives = step(users, pos, neg)
            if watchers:
                view = (BatchView(idx, users, pos, pos_scores, negatives[0], negatives[1], fn_mask) if negative_side
                        else BatchView(idx, users, pos, pos_scores))
                for probe in watchers:
                    probe.batch(view)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.detach()
            group_pairs += group_size_mean(users) * users.shape[0]
            if on_batch is not None:
                on_batch()
        return torch.stack([total / self.n_batches, group_pairs / self.users.shape[0]])

    def validate(self) -> EvalResult:
        """Full-ranking evaluation on the validation split (training items masked)."""
        self.model.eval()
        return self.validator.evaluate(*self.model.final_embeddings())

    def test(self, embeddings: tuple[torch.Tensor, torch.Tensor] | None = None) -> EvalResult:
        """Full-ranking evaluation on test (training, and validation unless leaky, masked).

        ``embeddings`` (U, I) replace the model's, e.g. `most_popular_baseline`.
        """
        self.model.eval()
        U, I = embeddings if embeddings is not None else self.model.final_embeddings()
        return self.tester.evaluate(U.to(self.device), I.to(self.device))


class EmptySplitError(ValueError):
    """An evaluation split (validation or test) has no user to evaluate."""


def valid_sample_record(cfg: RunConfig, trainer: Trainer) -> dict[str, int] | None:
    """What metrics.json records of a validation user sample (``train.valid_users``), None without one:
    ``{"users": validated users, "of": users with a validation item, "seed": data.split_seed}``."""
    if trainer.valid_sample is None:
        return None
    return {"users": trainer.validator.n_eval, "of": int(np.count_nonzero(trainer.data.valid.user_counts())),
            "seed": cfg.data.split_seed}


def check_evaluable(cfg: RunConfig, trainer: Trainer) -> None:
    """Raise `EmptySplitError` unless validation and test each have a user with a rankable item.

    A user counts when at least one of its ground-truth items is not masked
    (training items; validation items too when testing).  Metrics over zero
    users are undefined, and a run on such a split would report every metric
    as a meaningless number, so this is checked before any training.
    """
    dc = cfg.data
    source = (f"data.test_path ({dc.test_path})" if dc.train_path is not None
              else f"the dataset {dc.name!r} (data.name)")
    if dc.valid_is_test:
        valid_fix = f"valid = test here (data.valid_is_test): check {source}"
    elif dc.valid_path is not None:
        valid_fix = f"check data.valid_path ({dc.valid_path})"
    else:
        valid_fix = (f"it is carved from train with data.valid_fraction = {dc.valid_fraction}: raise it, give "
                     f"data.valid_path, or check the training data")
    for split, evaluator, fix in (("test", trainer.tester, f"check {source}"),
                                  ("validation", trainer.validator, valid_fix)):
        if evaluator.n_rankable > 0:
            continue
        if evaluator.n_eval == 0:
            cause = f"no user has a {split} item"
        else:
            cause = (f"{evaluator.n_eval} users have {split} items, but every one of them is masked (it is also a "
                     f"training{' or validation' if split == 'test' and not trainer.data.leaky else ''} item)")
        raise EmptySplitError(f"{split} split has no user with a {split} item after masking ({cause}); {fix}")


def fit(cfg: RunConfig, data: TrainData, device: torch.device, *, probes: Sequence[Probe] = (),
        progress: bool = True) -> FitResult:
    """Train ``cfg.model`` with ``cfg.loss`` on ``data.train``; early-stop on validation.

    Validation (``train.metric`` on the validation split) runs every
    ``train.eval_every`` epochs and always at the last epoch trained, whether
    that is ``train.epochs`` or the epoch at which ``train.time_limit`` ran out.
    ``train.patience`` counts validation rounds: training stops after that many
    rounds in a row without improving on the best one (never before the first
    round).  The best validated epoch's weights are restored, so ``best_epoch``
    is always ≥ 1; `EmptySplitError` (before training) when the validation or
    test split has no user to evaluate, RuntimeError when no validation round
    gave a number (a NaN metric).

    ``probes`` are told about every batch (those with ``wants_batches``) and
    every epoch; the columns they return join the epoch's row.  A probe whose
    ``epoch_end`` raises `StopTraining` ends training after that epoch (a
    tuner pruning a hopeless trial); the best epoch so far is restored and
    tested as usual.  ``stop_reason`` says which of `STOP_REASONS` ended it.  (Their
    ``start`` and ``finish`` hooks are called by `run_experiment`.)
    Returns the model with the best validation weights restored, the per-epoch
    history (``loss``, ``group_size_mean``, timings, validation metric, probe
    columns) and the test evaluation.  Same seed and device → same numbers.
    """
    tc = cfg.train
    trainer = Trainer(cfg, data, device)
    check_evaluable(cfg, trainer)
    trainer.probes = list(probes)
    model = trainer.model
    best_value, best_epoch, best_state = -math.inf, 0, None
    rounds = rounds_since_best = 0
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    stop_reason = "epoch_cap"
    bar = tqdm(range(1, tc.epochs + 1), desc=f"{cfg.model.name}+{cfg.loss.name}", disable=not progress,
               unit="epoch", dynamic_ncols=True)
    for epoch in bar:
        t0 = time.perf_counter()
        # batches of an epoch that takes more than a few seconds get their own (transient) bar
        batches = tqdm(total=trainer.n_batches, desc=f"epoch {epoch}", unit="batch", leave=False,
                       disable=not progress, delay=3.0, mininterval=1.0, dynamic_ncols=True)
        mean_loss, group_size = trainer.epoch(on_batch=batches.update).tolist()  # the one host sync of the epoch
        batches.close()
        train_seconds = time.perf_counter() - t0
        if not math.isfinite(mean_loss):
            raise TrainingDiverged(
                f"training loss became {mean_loss} at epoch {epoch} ({cfg.loss.name} {cfg.loss.to_flat()}, "
                f"lr={tc.lr}); lower train.lr (or raise the loss temperature)"
            )
        row: dict[str, Any] = {"epoch": epoch, "loss": mean_loss, "group_size_mean": group_size,
                               "train_seconds": train_seconds}
        out_of_time = bool(tc.time_limit) and time.perf_counter() - start >= tc.time_limit
        if epoch % tc.eval_every == 0 or epoch == tc.epochs or out_of_time:  # the last epoch is always validated
            t1 = time.perf_counter()
            value = trainer.validate().metrics[tc.metric]
            row.update({f"valid_{tc.metric}": value, "eval_seconds": time.perf_counter() - t1})
            rounds += 1
            if value > best_value:  # False for NaN: a NaN round never becomes the best
                best_value, best_epoch, rounds_since_best = value, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            elif best_state is not None:  # patience runs from the first round that gave a number
                rounds_since_best += 1
            bar.set_postfix(loss=f"{mean_loss:.4f}", **{tc.metric: f"{value:.4f}"}, best=best_epoch)
        else:
            bar.set_postfix(loss=f"{mean_loss:.4f}")
        if trainer.loss_state is not None:
            row.update(trainer.loss_state.epoch_end(epoch, model) or {})
        stop_asked: StopTraining | None = None
        for probe in trainer.probes:
            try:
                row.update(probe.epoch_end(epoch, model, row) or {})
            except StopTraining as stop:  # the other probes still see this epoch
                stop_asked = stop_asked or stop
        rows.append(row)
        if stop_asked is not None:
            stop_reason = "stopped_by_probe"
            break
        if tc.patience and rounds_since_best >= tc.patience:  # counted in validation rounds
            stop_reason = "early_stopping"
            break
        if out_of_time:
            stop_reason = "time_limit"
            break
    bar.close()
    seconds = time.perf_counter() - start
    if best_state is None:
        raise RuntimeError(
            f"no validation round gave a value of {tc.metric} ({rounds} rounds in {len(rows)} epochs, all NaN): "
            f"there is no best epoch to restore"
        )
    model.load_state_dict(best_state)
    popular = trainer.test(most_popular_baseline(data.seen, dtype=torch.float32))
    return FitResult(model, best_epoch, best_value, pd.DataFrame(rows), trainer.validate(), trainer.test(),
                     seconds, stop_reason == "early_stopping",
                     extra={"most_popular": popular.metrics,
                            "scorer": trainer.scorer.to_dict() if trainer.scorer is not None else None,
                            "valid_sample": valid_sample_record(cfg, trainer)},
                     stop_reason=stop_reason)
