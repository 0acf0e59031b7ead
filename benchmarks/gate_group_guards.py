"""How often does the gate's per-segment audit guard reject? (labelloop/domain/gate.py `group_guard`.)

Simulated audit rows, split evenly into segments, weighted by inverse sampling probabilities drawn uniformly from
5 to 15; every row is right for each model with probability 0.8, independently (the noisiest case for a paired
test: two retrains of one model disagree on fewer rows). The champion is as good on every segment; the challenger
is too ("equally good": every rejection is a false one, a missed promotion) or is `drop` worse on the first segment
(a rejection is the guard doing its job). Each segment has at least `gate.audit_min_rows_per_group` (20) rows and
is tested at `gate.min_confidence` 0.9 against the allowance `gate.max_segment_accuracy_drop`.

    .venv/bin/python benchmarks/gate_group_guards.py               # 300 trials per cell (~3 minutes on one core)
    .venv/bin/python benchmarks/gate_group_guards.py --trials 50

Prints a markdown table of the share of trials the guard rejected.
"""

from __future__ import annotations

import argparse

import numpy as np

from labelloop.config import GateParams
from labelloop.domain.gate import PairedRows, audit_group_guards, group_guard

K = 4  # classes
ACCURACY = 0.8
SETUPS = ((120, 2), (200, 4), (400, 8))  # audit rows, segments
DROPS = (0.0, 0.3)
ALLOWANCES = (0.0, 0.05, 0.1, 0.2)
SEED = 7


def _proba(predicted: np.ndarray) -> np.ndarray:
    proba = np.full((len(predicted), K), 0.1 / (K - 1))
    proba[np.arange(len(predicted)), predicted] = 0.9
    return proba


def rejects(rng: np.random.Generator, rows: int, segments: int, drop: float, allowance: float) -> bool:
    """One simulated gate: does the segment guard reject?"""
    segment = np.repeat(np.arange(segments), rows // segments).astype(str)
    y = rng.integers(0, K, len(segment))
    wrong = (y + 1) % K
    champion_right = rng.random(len(segment)) < ACCURACY
    challenger_right = rng.random(len(segment)) < ACCURACY - np.where(segment == "0", drop, 0.0)
    audit = PairedRows("audit", y, _proba(np.where(challenger_right, y, wrong)), _proba(np.where(champion_right, y, wrong)),
                       rng.uniform(5, 15, len(segment)), segments={"segment": segment})
    rules = GateParams(max_segment_accuracy_drop=allowance)
    [guard] = audit_group_guards(audit, rules)
    return group_guard(audit, guard, rules)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=300)
    trials = parser.parse_args().trials
    print("| audit rows (segments × rows) | challenger on segment 0 | "
          + " | ".join(f"allowance {a}" for a in ALLOWANCES) + " |")
    print("|---|---|" + "---|" * len(ALLOWANCES))
    for rows, segments in SETUPS:
        for drop in DROPS:
            cells = []
            for allowance in ALLOWANCES:
                rng = np.random.default_rng(SEED)
                cells.append(f"{np.mean([rejects(rng, rows, segments, drop, allowance) for _ in range(trials)]):.1%}")
            what = "equally good" if drop == 0 else f"{drop} worse"
            print(f"| {rows} ({segments} × {rows // segments}) | {what} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
