"""`select.strategy: auto` on a workspace: the bandit's durable state, the arm each batch is drawn by, and the
reward each batch earns once a model trained on it is gated (labelloop/domain/acquisition/bandit.py is the pure
bandit).

- Select (`choose_arm`): the arm is drawn from the state in `state/bandit.json` with a generator seeded by the
  batch's selection key, and recorded in the batch meta (`BatchMeta.bandit`: arm, its probability, every arm's
  probability). A crash between the draw and the batch's write reruns select with the same key and the same state
  (rewards are recorded only at the gate), so it draws the same arm; a rerun after the write finds the batch.
- Gate (`record_rewards`): each batch drawn by an arm, versioned into the labelled set and not yet in the state, is
  paid the importance-weighted gain (`bandit.batch_gain`: in accuracy, or in the true class's probability:
  `select.bandit.gain_measure`) of the challenger (trained on it) over the model that selected it, on
  the audit items neither trained on (the audit set, `Workspace.audit_path`, minus the labelled set the challenger
  trained on: audit items are withheld from training until evaluated, labelloop/stages/audit.py). No audit items
  yet: the batch is recorded with no reward (the weights do not move). The state is written atomically before the
  reward is copied to the batch meta and logged to MLflow (metric `bandit_reward`, tags `bandit_arm`, ...), and a
  batch already in the state is never paid again, so a rerun after a crash anywhere neither loses nor double-counts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from labelloop.batches import BatchMeta, BatchStore
from labelloop.columns import ITEM_ID, LABEL
from labelloop.config import BanditParams, SelectParams
from labelloop.core.io import read_json, read_parquet, write_json
from labelloop.domain.acquisition import bandit
from labelloop.workspace import Workspace

AUDIT_WEIGHT = "audit_weight"  # the audit set's column of inverse inclusion probabilities (labelloop/stages/audit.py)


def state_path(workspace: Workspace) -> Path:
    return workspace.state_dir / "bandit.json"


def load_state(workspace: Workspace, params: BanditParams) -> bandit.BanditState:
    """The recorded state under the configured arms, rates and warm-up (the starting weights when none is recorded;
    a state written by an earlier version, without its warm-up, loads the same way)."""
    data = read_json(state_path(workspace))
    if data is None:
        return bandit.initial_state(params.arms, params.gamma, params.eta, random_start=params.random_start,
                                    warmup=params.warmup, random_decay=params.random_decay)
    return bandit.reconcile(bandit.BanditState.from_dict(data), params.arms, params.gamma, params.eta, params.warmup,
                            random_decay=params.random_decay)


def choose_arm(workspace: Workspace, params: SelectParams, key: str) -> tuple[str, dict[str, Any]]:
    """(the strategy that draws the batch with selection key `key`, what its meta records about the choice)."""
    state = load_state(workspace, params.bandit)
    arm, probabilities = bandit.choose(state, np.random.default_rng(bandit.choice_seed(key, params.seed)))
    return arm, {"arm": arm, "probability": probabilities[arm], "probabilities": probabilities}


def _due(meta: BatchMeta, state: bandit.BanditState) -> bool:
    return bool(meta.bandit.get("arm")) and meta.versioned_in is not None and state.record(meta.batch_id) is None


def record_rewards(workspace: Workspace, model_name: str, challenger_version: str,
                   params: BanditParams) -> list[bandit.BanditRecord]:
    """Pay every due batch (see the module docstring); returns the records paid by `challenger_version`
    (this call's or an earlier, interrupted one's)."""
    store = BatchStore(workspace)
    state = load_state(workspace, params)
    due = [meta for meta in store.list() if _due(meta, state)]
    if due:
        audit = fresh_audit_items(workspace)
        predictions: dict[str, np.ndarray] = {}
        for meta in due:
            gain = reward = None
            if len(audit) and meta.champion_version is not None:
                before = _predict(workspace, model_name, str(meta.champion_version), audit, predictions)
                after = _predict(workspace, model_name, str(challenger_version), audit, predictions)
                gain = bandit.batch_gain(audit[LABEL].astype(str).to_numpy(), before, after,
                                         workspace.schema().class_names, _weights(audit), measure=params.gain_measure)
                reward = bandit.batch_reward(state, gain, params.reward_scale)
            state = bandit.update(
                state, meta.batch_id, str(meta.bandit["arm"]), float(meta.bandit["probability"]), reward, gain=gain,
                n_audit=len(audit), detail={"model_version": str(challenger_version),
                                            "selected_by": meta.champion_version, "baseline": bandit.gain_baseline(state)},
            )
        write_json(state_path(workspace), state.to_dict())
    paid = [r for r in state.records if r.detail.get("model_version") == str(challenger_version)]
    for record in paid:  # idempotent: the same values on a rerun
        marked = store.get(record.batch_id) if store.exists(record.batch_id) else None
        if marked is not None and marked.bandit.get("measured_by") != str(challenger_version):
            store.mark(record.batch_id, bandit={**marked.bandit, "reward": record.reward, "gain": record.gain,
                                                "n_audit": record.n_audit, "measured_by": str(challenger_version)})
    if paid:
        log_rewards(workspace, model_name, challenger_version, paid, state)
    return paid


def fresh_audit_items(workspace: Workspace) -> pd.DataFrame:
    """Audit items not in the labelled set (at the gate: the challenger's training data; older models trained on
    a subset of it), with a label. Empty when there is no audit set yet."""
    path = workspace.audit_path
    if not path.exists():
        return pd.DataFrame(columns=[ITEM_ID, LABEL, AUDIT_WEIGHT])
    audit = read_parquet(path)
    labeled = set(read_parquet(workspace.labeled_path, columns=[ITEM_ID])[ITEM_ID].astype(str))
    keep = ~audit[ITEM_ID].astype(str).isin(labeled) & audit[LABEL].notna()
    return audit.loc[keep].drop_duplicates(ITEM_ID, keep="last").reset_index(drop=True)


def _weights(audit: pd.DataFrame) -> np.ndarray:
    if AUDIT_WEIGHT not in audit.columns:
        return np.ones(len(audit))
    return pd.to_numeric(audit[AUDIT_WEIGHT], errors="coerce").fillna(1.0).to_numpy(dtype=np.float64)


def _predict(workspace: Workspace, model_name: str, version: str, audit: pd.DataFrame,
             cache: dict[str, np.ndarray]) -> np.ndarray:
    if version not in cache:
        from labelloop.adapters import tracking

        model = tracking.load_model(workspace, model_name, version)
        cache[version] = np.asarray(model.predict_proba(audit[workspace.schema().feature_columns]), dtype=np.float64)
    return cache[version]


def log_rewards(workspace: Workspace, model_name: str, version: str, paid: list[bandit.BanditRecord],
                state: bandit.BanditState) -> None:
    """On the challenger's run: metric `bandit_reward` (and `bandit_gain`) per batch, tags naming the arms, and the
    arms' probabilities after the update (`bandit_p_<arm>`). Setting the same values again is harmless."""
    from labelloop.adapters import tracking

    client = tracking.client(workspace)
    run_id = client.get_model_version(model_name, str(version)).run_id
    for step, record in enumerate(paid):
        if record.reward is not None:
            client.log_metric(run_id, "bandit_reward", record.reward, step=step)
        if record.gain is not None and np.isfinite(record.gain):
            client.log_metric(run_id, "bandit_gain", record.gain, step=step)
    client.set_tag(run_id, "bandit_arm", ",".join(r.arm for r in paid))
    client.set_tag(run_id, "bandit_batch", ",".join(r.batch_id for r in paid))
    for arm, p in zip(state.arms, bandit.probabilities(state), strict=True):
        client.log_metric(run_id, f"bandit_p_{arm}", float(p))


def batch_text(workspace: Workspace, batch_id: str | None) -> str | None:
    """The cycle line's part for the batch `batch_id`: the arm that drew it (select.strategy auto), with what
    probability, and its reward once a model trained on it was gated; None for a batch no bandit drew."""
    store = BatchStore(workspace)
    if batch_id is None or not store.exists(batch_id):
        return None
    chosen = store.get(batch_id).bandit
    if not chosen.get("arm"):
        return None
    text = f"arm {chosen['arm']} (p {float(chosen['probability']):.2f})"
    if "measured_by" not in chosen:
        return text + ", reward not measured yet"
    if chosen.get("reward") is None:
        return text + ", no reward (no audit items yet)"
    return text + f", reward {float(chosen['reward']):.2f} (gain {float(chosen['gain']):+.4f} on {chosen['n_audit']} audit)"


def bandit_line(records: list[bandit.BanditRecord]) -> str | None:
    """One line for the cycle's log: which arm drew the batch and what it earned."""
    if not records:
        return None
    parts = []
    for r in records:
        earned = "no audit items yet" if r.reward is None else f"reward {r.reward:.2f} (gain {r.gain:+.4f} on {r.n_audit})"
        parts.append(f"{r.batch_id} by {r.arm}: {earned}")
    return "bandit: " + "; ".join(parts)
