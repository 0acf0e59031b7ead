"""`select.strategy: auto`: an online bandit that picks the acquisition strategy of each batch by measured gain.

In the spirit of ALBL (Hsu & Lin 2015, "Active Learning by Learning"): each batch is drawn by one arm (a
registered strategy name), chosen by EXP3 with a probability floor, and the arm is paid the
importance-weighted accuracy gain its batch brought, measured on audit items (a uniform sample of traffic
whose inclusion probabilities are known, labelled but trained on by neither model):

    p_a  = (1 − γ) · softmax(log_w)_a + γ / K             every arm keeps at least γ / K
    log_w_a += η · (r − ½) / p_a   for the arm a played    (EXP3's importance-weighted reward estimate)

with the reward r = clip(½ + (gain − b) / (2 · reward_scale), 0, 1) in [0, 1], b the mean gain of the last
few batches whatever their arm (learning curves flatten: every arm gains more early on): a gain of
reward_scale (accuracy as a fraction) above b pays 1, b itself ½, reward_scale or more below it 0.
Subtracting ½ (and b) keeps EXP3's estimate unbiased up to a shift common to every arm (the probabilities
depend only on differences of log-weights) and stops an arm from gaining weight merely by being played.

Two settings keep it from paying for its own start (`select.bandit.random_start` and `warmup`, arguments of
`initial_state` and `reconcile`; their defaults are BanditParams' in labelloop/config.py, measured in
docs/benchmarks.md, "select.strategy: auto"; 0 restores the plain EXP3 above):
- `random_start` = −4: `random` starts at its floor instead of 1 / K. It is the fallback that bounds how far auto
  can fall behind random, not a candidate to spread the first batches over (whole early batches drawn at random
  were what cost auto most against the best single strategy, and the audit sample already draws uniform items
  every cycle); EXP3 gives it its share back when it is paid more than the others.
- `warmup` = 2: the first two measured batches (the seed model's first batches, whose gains are large under any
  arm: 0.07–0.17, then up to 0.05, against ±0.01 later) are no baseline — a baseline that high paid the next
  batches 0 whatever they brought — so the first three are paid ½, and the floor applies only once those three
  are recorded (an exploratory batch paid ½ whatever it brought would cost labels and teach nothing).
A third, `select.bandit.random_decay` (d, an argument of `initial_state` and `reconcile`; BanditParams' default 0.5,
1 = off, the arguments' default, which an older state file without the key also loads as), lets random's floor decay
once random has been measured: γ / K · d^n, n = its batches paid after the warm-up (`random_floor`); its
share is then what EXP3's weights give it, which rise when it is paid more than the others (and the update divides
by at least γ / K, so that one lucky batch drawn at a decayed probability does not swamp the weights). The floor is
the guarantee against random before it has been measured; late on a learning curve the rewards no longer separate
the arms (the gains are 0 ± a few audit rows under every arm: a first try that decayed random only while it was
measured to gain less than the batches around it was a coin flip there), and the floor alone kept random at
10–24% of the batches on letter, where a random batch is worth a quarter of an uncertainty batch.
A fourth, `select.bandit.gain_measure: probability` (paid on the gain in the true class's probability instead of
accuracy; `batch_gain`'s `measure`), changed no verdict and is off (`accuracy`).

Bookkeeping is idempotent: the state keeps one record per batch id, and `update` with a batch id already
recorded returns the state unchanged, so a rerun after a crash never pays a reward twice. `choose` is a pure
function of the state and the generator: seed the generator from the batch's selection key and a rerun of
select (same pool, same params, same champion, no reward recorded in between) picks the same arm.

Pure: numpy in, numpy and plain dicts out; no I/O, no configuration objects (the settings come as arguments).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, get_args

import numpy as np

from labelloop.config import GainMeasure

BASELINE_ARM = "random"  # always an arm: the baseline auto must not fall far behind
DEFAULT_ARMS = ("random", "margin", "hybrid")
DEFAULT_GAMMA = 0.3
DEFAULT_ETA = 0.5
DEFAULT_REWARD_SCALE = 0.02
BASELINE_WINDOW = 3


@dataclass(frozen=True)
class BanditRecord:
    """What the bandit knows about one batch: the arm that drew it, with what probability, and its reward
    (None: measured with no audit items available, so the weights were not changed)."""

    batch_id: str
    arm: str
    probability: float
    reward: float | None = None
    gain: float | None = None
    n_audit: int = 0
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"batch_id": self.batch_id, "arm": self.arm, "probability": self.probability, "reward": self.reward,
                "gain": self.gain, "n_audit": self.n_audit, "detail": dict(self.detail)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BanditRecord:
        return cls(str(data["batch_id"]), str(data["arm"]), float(data["probability"]),
                   None if data.get("reward") is None else float(data["reward"]),
                   None if data.get("gain") is None else float(data["gain"]), int(data.get("n_audit", 0)),
                   dict(data.get("detail") or {}))


@dataclass(frozen=True)
class BanditState:
    """Log-weights per arm and one record per batch (in the order they were recorded), with the rates and the warm-up
    they are played under (`warmup`: the first `warmup` measured batches are no baseline, so the first warmup + 1
    are paid ½ and the floor γ / K applies once those are recorded; 0: no warm-up)."""

    arms: tuple[str, ...]
    log_weights: tuple[float, ...]
    gamma: float = DEFAULT_GAMMA
    eta: float = DEFAULT_ETA
    records: tuple[BanditRecord, ...] = ()
    warmup: int = 0
    random_decay: float = 1.0  # 1: random keeps the floor γ / K however often it was paid (`random_floor`)

    def record(self, batch_id: str) -> BanditRecord | None:
        for record in self.records:
            if record.batch_id == batch_id:
                return record
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"arms": list(self.arms), "log_weights": [float(w) for w in self.log_weights], "gamma": self.gamma,
                "eta": self.eta, "warmup": self.warmup, "random_decay": self.random_decay,
                "records": [r.to_dict() for r in self.records]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BanditState:
        # A state written before the warm-up (or the decay) was recorded in it has none: `reconcile` sets the configured one.
        return cls(tuple(map(str, data["arms"])), tuple(float(w) for w in data["log_weights"]), float(data["gamma"]),
                   float(data["eta"]), tuple(BanditRecord.from_dict(r) for r in data.get("records", ())),
                   int(data.get("warmup", 0)), float(data.get("random_decay", 1.0)))


def initial_state(arms: Sequence[str], gamma: float = DEFAULT_GAMMA, eta: float = DEFAULT_ETA, *,
                  random_start: float, warmup: int, random_decay: float = 1.0) -> BanditState:
    """The weights before any reward: 0 for every arm but `random` (which `arms` must include), which starts at
    `random_start` ≤ 0 (0 = equal weights); played with a warm-up of `warmup` ≥ 0 measured batches (`BanditState`) and
    random's floor decay `random_decay` in (0, 1] (`random_floor`; 1 = none).
    Below 0, random starts at its floor: the fallback that bounds how far auto can fall behind random rather than a
    candidate to spread the first batches over (the audit sample already draws uniform items every cycle); EXP3's
    update gives it its share back when it is paid more than the others."""
    arms = tuple(arms)
    if BASELINE_ARM not in arms or len(set(arms)) != len(arms):
        raise ValueError(f"arms must be distinct and include {BASELINE_ARM!r}; got {list(arms)}")
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    if eta <= 0:
        raise ValueError(f"eta must be positive, got {eta}")
    start = float(random_start)
    if not start <= 0:
        raise ValueError(f"random_start must be at most 0, got {random_start}")
    if isinstance(warmup, bool) or int(warmup) != warmup or warmup < 0:
        raise ValueError(f"warmup must be a whole number of batches ≥ 0, got {warmup!r}")
    if not 0 < random_decay <= 1:
        raise ValueError(f"random_decay must be in (0, 1], got {random_decay}")
    return BanditState(arms, tuple(start if a == BASELINE_ARM else 0.0 for a in arms), float(gamma), float(eta),
                       warmup=int(warmup), random_decay=float(random_decay))


def reconcile(state: BanditState, arms: Sequence[str], gamma: float, eta: float, warmup: int, *,
              random_decay: float = 1.0) -> BanditState:
    """`state` under the configured arms, rates, warm-up and decay: an arm added to the configuration starts at the
    mean log-weight of the others, a removed arm is dropped (its records are kept); gamma, eta, warmup and
    random_decay follow the configuration (the random arm's starting weight applies only to a state with no weights
    yet)."""
    arms = tuple(arms)
    known = dict(zip(state.arms, state.log_weights, strict=True))
    start = float(np.mean(list(known.values()))) if known else 0.0
    fresh = initial_state(arms, gamma, eta, random_start=0.0, warmup=warmup, random_decay=random_decay)
    return replace(fresh, log_weights=tuple(known.get(a, start) for a in arms), records=state.records)


def measured(state: BanditState) -> int:
    """How many batches' gains are recorded (a batch recorded with no audit items has none)."""
    return sum(1 for r in state.records if r.gain is not None and np.isfinite(r.gain))


def paid(state: BanditState) -> list[BanditRecord]:
    """The batches paid around a baseline: all those with a reward with no warm-up, else those after the first
    warmup + 1 (paid ½ whatever they brought; a batch has a reward when its gain was measured)."""
    gained = [r for r in state.records if r.reward is not None]
    return gained[state.warmup + 1:] if state.warmup else gained


def random_floor(state: BanditState) -> float:
    """Random's floor: γ / K, times `state.random_decay` ** n once random has been measured, n = its paid batches
    (`paid`). The floor is the guarantee against random before it has been measured; once it has, its share is what
    EXP3's weights give it (they rise when it is paid more than the others)."""
    n = sum(1 for r in paid(state) if r.arm == BASELINE_ARM) if state.random_decay < 1 else 0
    return state.gamma / len(state.arms) * state.random_decay ** n


def probabilities(state: BanditState) -> np.ndarray:
    """EXP3's sampling distribution: the weights' softmax mixed with a floor, γ / K for every arm but random, whose
    floor decays once it has been measured (`random_floor`) — with a warm-up (`state.warmup` ≥ 1), only once warmup + 1
    batches' gains are recorded; before, the softmax alone (the batches drawn then are paid ½ whatever they bring, see
    `batch_reward`: exploring would teach nothing)."""
    w = np.asarray(state.log_weights, dtype=np.float64)
    w = np.exp(w - w.max())
    k = len(state.arms)
    if state.warmup and measured(state) <= state.warmup:
        return w / w.sum()
    floors = np.full(k, state.gamma / k)
    if BASELINE_ARM in state.arms:
        floors[state.arms.index(BASELINE_ARM)] = random_floor(state)
    return (1.0 - floors.sum()) * w / w.sum() + floors


def choose(state: BanditState, rng: np.random.Generator) -> tuple[str, dict[str, float]]:
    """(the arm drawn, every arm's probability). Pure given the state and the generator."""
    p = probabilities(state)
    index = int(rng.choice(len(p), p=p))
    return state.arms[index], {arm: float(q) for arm, q in zip(state.arms, p, strict=True)}


def choice_seed(key: str, seed: int = 0) -> int:
    """A generator seed from a batch's selection key: the same key (a rerun) draws the same arm."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big")


def update(state: BanditState, batch_id: str, arm: str, probability: float, reward: float | None, *,
           gain: float | None = None, n_audit: int = 0, detail: Mapping[str, Any] | None = None) -> BanditState:
    """The state with batch `batch_id` recorded: `arm` drew it with `probability` and earned `reward` in [0, 1]
    (None: no audit items to measure it on, recorded without changing the weights). Idempotent: a batch id
    already recorded returns `state` unchanged (a rerun never pays a reward twice)."""
    if state.record(batch_id) is not None:
        return state
    if reward is not None and not 0.0 <= reward <= 1.0:
        raise ValueError(f"reward must be in [0, 1], got {reward}")
    if not 0.0 < probability <= 1.0:
        raise ValueError(f"probability must be in (0, 1], got {probability}")
    weights = list(state.log_weights)
    if reward is not None and arm in state.arms:
        i = state.arms.index(arm)
        # With random's floor decaying, divide by at least γ / K (as in EXP3-IX): a random batch drawn at p = 0.01
        # that gains two audit rows would otherwise move its log-weight by 12. Without the decay p ≥ γ / K anyway.
        seen = probability if state.random_decay == 1 else max(probability, state.gamma / len(state.arms))
        weights[i] += state.eta * (reward - 0.5) / seen
        top = max(weights)
        weights = [w - top for w in weights]  # keep them bounded; probabilities depend only on differences
    record = BanditRecord(batch_id, arm, float(probability), reward, gain, int(n_audit), dict(detail or {}))
    return replace(state, log_weights=tuple(weights), records=(*state.records, record))


# -- the reward -----------------------------------------------------------------------------------------

def weighted_accuracy(y_true: np.ndarray, y_pred: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Importance-weighted (Hajek) accuracy: Σ w·[pred = true] / Σ w; NaN on no rows."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has shape {y_true.shape}, y_pred {y_pred.shape}")
    return _weighted_mean((y_true == y_pred).astype(np.float64), weights)


def _weighted_mean(values: np.ndarray, weights: np.ndarray | None) -> float:
    """Σ w·v / Σ w (w = 1 when None); NaN on no rows or no weight."""
    w = np.ones(len(values)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != values.shape:
        raise ValueError(f"weights have shape {w.shape}, the labels {values.shape}")
    if (w < 0).any() or not np.isfinite(w).all():
        raise ValueError("weights must be finite and non-negative")
    total = float(w.sum())
    if len(values) == 0 or total == 0:
        return float("nan")
    return float(np.sum(w * values) / total)


def accuracy_gain(y_true: np.ndarray, pred_before: np.ndarray, pred_after: np.ndarray,
                  weights: np.ndarray | None = None) -> float:
    """IW accuracy of the model trained after the batch minus that of the model that selected it, on the
    same audit rows (neither model trained on them); NaN on no rows."""
    return weighted_accuracy(y_true, pred_after, weights) - weighted_accuracy(y_true, pred_before, weights)


def true_class_probability(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """Each row's probability of its true class (`proba`'s columns in the order of `classes`; 0 for a label not
    among them)."""
    y_true, proba = np.asarray(y_true).astype(str), np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape != (len(y_true), len(classes)):
        raise ValueError(f"proba has shape {proba.shape}, expected ({len(y_true)}, {len(classes)})")
    column = {str(c): i for i, c in enumerate(classes)}
    index = np.array([column.get(label, -1) for label in y_true], dtype=np.int64)
    out = np.zeros(len(y_true))
    known = index >= 0
    out[known] = proba[np.flatnonzero(known), index[known]]
    return out


def batch_gain(y_true: np.ndarray, proba_before: np.ndarray, proba_after: np.ndarray, classes: Sequence[str],
               weights: np.ndarray | None = None, *, measure: GainMeasure) -> float:
    """The gain a batch is paid on, of the model trained after it over the model that selected it, on the same audit
    rows; NaN on no rows. `measure` "accuracy": the IW accuracy gain (moves in steps of one row: 0.002 on 450 rows);
    "probability": the IW mean gain in the probability the model gives the audit rows' true class, the accuracy
    gain's smooth counterpart (the expected accuracy of a classifier drawing its label from `proba`): its step is
    not one row, so the small gains of later batches are not lost in rounding to whole rows."""
    if measure not in get_args(GainMeasure):
        raise ValueError(f"unknown gain measure {measure!r}; allowed: {', '.join(get_args(GainMeasure))}")
    classes = [str(c) for c in classes]
    if measure == "accuracy":
        names = np.asarray(classes, dtype=object)
        return accuracy_gain(np.asarray(y_true).astype(str), names[np.argmax(proba_before, axis=1)].astype(str),
                             names[np.argmax(proba_after, axis=1)].astype(str), weights)
    before = true_class_probability(y_true, proba_before, classes)
    return _weighted_mean(true_class_probability(y_true, proba_after, classes) - before, weights)


def scaled_reward(gain: float | None, reward_scale: float = DEFAULT_REWARD_SCALE, baseline: float = 0.0) -> float | None:
    """A gain mapped to [0, 1]: ½ + (gain − baseline) / (2 · reward_scale), clipped; None for a NaN gain (no audit
    rows). `baseline` (`gain_baseline`) is the gain recent batches brought whatever their arm: learning curves
    flatten, so early batches gain more under every arm, and without it the arms played first would look best."""
    if reward_scale <= 0:
        raise ValueError(f"reward_scale must be positive, got {reward_scale}")
    if gain is None or not np.isfinite(gain):
        return None
    return float(np.clip(0.5 + (gain - baseline) / (2.0 * reward_scale), 0.0, 1.0))


def gain_baseline(state: BanditState, window: int = BASELINE_WINDOW) -> float | None:
    """Mean gain of the last `window` measured batches whatever their arm, leaving out the first `state.warmup` (None when
    there is no other; 0 with no warm-up and no gain yet). Common to every arm at the time of a choice, so EXP3's
    estimates stay unbiased up to that shared shift. A warm-up leaves out the seed model's first batches: their gains
    (0.03–0.17 in the benchmarks under any arm, ten times the later ones) make a baseline that pays the next batches
    0 whatever they bring."""
    gains = [r.gain for r in state.records if r.gain is not None and np.isfinite(r.gain)][state.warmup:][-window:]
    if not gains:
        return 0.0 if state.warmup == 0 else None  # no warm-up: the first batch is paid against no gain at all
    return float(np.mean(gains))


def batch_reward(state: BanditState, gain: float | None, reward_scale: float = DEFAULT_REWARD_SCALE,
                 window: int = BASELINE_WINDOW) -> float | None:
    """The reward of the next batch to be recorded in `state`, given its gain (`batch_gain`): `scaled_reward` around
    `gain_baseline`; ½ (the weights do not move) while there is no baseline (with a warm-up: the first warmup + 1
    measured batches); None for a NaN gain (no audit items)."""
    reward = scaled_reward(gain, reward_scale)
    if reward is None:
        return None
    baseline = gain_baseline(state, window)
    return 0.5 if baseline is None else scaled_reward(gain, reward_scale, baseline)


def arm_shares(arms: Sequence[str], chosen: Sequence[str]) -> dict[str, float]:
    """Share of batches each arm drew (0 for an arm never played); empty input gives zeros."""
    n = len(chosen)
    return {arm: (sum(1 for c in chosen if c == arm) / n if n else 0.0) for arm in arms}
