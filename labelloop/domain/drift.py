"""Drift: how far a window of production rows has moved from a reference (the training data).

Pure computation over arrays and frames, no I/O. Per feature column, by role:

- numeric: PSI over bins cut at the reference's quantiles (missing values are a bin of their own), and the
  two-sample Kolmogorov–Smirnov statistic over the present values as a second measure;
- categorical: PSI over the reference's categories (the most frequent `max_categories`, the rest pooled
  as "other"), plus one bucket for categories the reference never had ("unseen") and one for missing;
- text: the same as numeric, over the length of the text in characters (missing text is the missing bin);
- the model's confidence (max class probability): as numeric.

PSI = Σ (cᵢ − rᵢ) · ln(cᵢ / rᵢ) over the bins' shares, each share floored at `EPSILON` so an empty bin
counts as a large but finite shift. Conventional reading: below 0.1 stable, 0.1–0.2 moderate, 0.2 or
more drifted; the thresholds are parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

EPSILON = 1e-4  # floor of a bin's share in the PSI (an empty bin is a large, finite shift)
CONFIDENCE = "confidence"  # the column name the model's confidence is reported under

STABLE, MODERATE, DRIFTED = "stable", "moderate", "drifted"


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    kind: str  # numeric, categorical, text (measured on lengths) or confidence
    psi: float
    status: str  # stable, moderate or drifted (by PSI)
    ks: float | None = None  # numeric, text length and confidence
    bins: int = 0  # bins the PSI summed over (missing / unseen / other included)
    missing_reference: float = 0.0  # share of missing values
    missing_current: float = 0.0
    unseen_share: float | None = None  # categorical: share of current rows whose category the reference lacks
    # categorical: (category, reference share, current share) for the reference's top categories, most frequent
    # first (per-segment drift reads these; labelloop/domain/segments.py)
    categories: tuple[tuple[str, float, float], ...] = ()

    def text(self) -> str:
        extra = f", KS {self.ks:.2f}" if self.ks is not None else ""
        if self.unseen_share:
            extra += f", {self.unseen_share:.1%} unseen"
        name = f"{self.column} (length)" if self.kind == "text" else self.column
        return f"{name} PSI {self.psi:.2f}{extra}"


@dataclass(frozen=True)
class DriftReport:
    columns: tuple[ColumnDrift, ...]
    reference_rows: int  # rows compared (after sampling)
    current_rows: int
    current_rows_total: int  # rows in the window before sampling
    moderate_psi: float
    drifted_psi: float
    reference: str = "labeled"  # what the features were compared with
    confidence_reference: str = ""  # what the confidence was compared with ('' when it was not)
    skipped: str = ""  # why nothing was compared (too few rows), else ''
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def drifted(self) -> list[ColumnDrift]:
        return sorted((c for c in self.columns if c.status == DRIFTED), key=lambda c: -c.psi)

    @property
    def moderate(self) -> list[ColumnDrift]:
        return sorted((c for c in self.columns if c.status == MODERATE), key=lambda c: -c.psi)

    @property
    def sampled(self) -> bool:
        return self.current_rows < self.current_rows_total

    def text(self, top: int = 5) -> str:
        """One line, e.g. 'drift: 2 of 37 columns drifted (PSI ≥ 0.2): x1 PSI 0.45, KS 0.31; confidence PSI 0.22
        …; 1 moderate' — or 'drift: none of 37 columns (PSI < 0.1)'."""
        if self.skipped:
            return f"drift: not measured ({self.skipped})"
        n = len(self.columns)
        if not self.drifted and not self.moderate:
            return f"drift: none of {n} columns (PSI < {self.moderate_psi:g})"
        parts = []
        if self.drifted:
            shown = self.drifted[:top]
            more = f" and {len(self.drifted) - top} more" if len(self.drifted) > top else ""
            parts.append(f"{len(self.drifted)} of {n} columns drifted (PSI ≥ {self.drifted_psi:g}): "
                         + "; ".join(c.text() for c in shown) + more)
        if self.moderate:
            names = ", ".join(c.column for c in self.moderate[:top]) + (" …" if len(self.moderate) > top else "")
            parts.append(f"{len(self.moderate)} moderate ({names})")
        return "drift: " + "; ".join(parts)

    def metrics(self) -> dict[str, float]:
        """For MLflow: drift.psi.<column>, drift.ks.<column>, drift.unseen_share.<column>, drift.columns_drifted,
        drift.columns_moderate, drift.max_psi. Empty when nothing was compared."""
        if self.skipped:
            return {}
        out: dict[str, float] = {}
        for c in self.columns:
            out[f"drift.psi.{c.column}"] = c.psi
            if c.ks is not None:
                out[f"drift.ks.{c.column}"] = c.ks
            if c.unseen_share is not None:
                out[f"drift.unseen_share.{c.column}"] = c.unseen_share
        out["drift.columns_drifted"] = float(len(self.drifted))
        out["drift.columns_moderate"] = float(len(self.moderate))
        out["drift.max_psi"] = max((c.psi for c in self.columns), default=0.0)
        return out

    def markdown(self) -> str:
        if self.skipped:
            return f"Drift not measured: {self.skipped}.\n"
        head = (f"Drift of {self.current_rows:,} window rows"
                + (f" (a uniform sample of {self.current_rows_total:,})" if self.sampled else "")
                + f" against {self.reference_rows:,} rows of the {self.reference} data"
                + (f"; confidence against {self.confidence_reference}" if self.confidence_reference else "")
                + f". PSI ≥ {self.drifted_psi:g} drifted, ≥ {self.moderate_psi:g} moderate.\n\n")
        table = "| column | kind | PSI | KS | unseen | missing (ref → now) | status |\n|---|---|---|---|---|---|---|\n"
        for c in sorted(self.columns, key=lambda c: -c.psi):
            ks = f"{c.ks:.3f}" if c.ks is not None else ""
            unseen = f"{c.unseen_share:.1%}" if c.unseen_share is not None else ""
            kind = "text length" if c.kind == "text" else c.kind
            table += (f"| `{c.column}` | {kind} | {c.psi:.3f} | {ks} | {unseen} | "
                      f"{c.missing_reference:.1%} → {c.missing_current:.1%} | {c.status} |\n")
        return head + table + "".join(f"\n{note}\n" for note in self.notes)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["drifted"] = [c.column for c in self.drifted]
        data["moderate"] = [c.column for c in self.moderate]
        return data


def status_of(psi: float, moderate_psi: float, drifted_psi: float) -> str:
    return DRIFTED if psi >= drifted_psi else MODERATE if psi >= moderate_psi else STABLE


def psi_from_counts(reference: np.ndarray, current: np.ndarray) -> float:
    """PSI between two histograms over the same bins (counts, not shares)."""
    r = np.asarray(reference, dtype=np.float64)
    c = np.asarray(current, dtype=np.float64)
    if r.sum() <= 0 or c.sum() <= 0:
        return 0.0
    r = np.maximum(r / r.sum(), EPSILON)
    c = np.maximum(c / c.sum(), EPSILON)
    return float(np.sum((c - r) * np.log(c / r)))


def quantile_edges(reference: np.ndarray, bins: int) -> np.ndarray:
    """Inner bin edges at the reference's quantiles (present values only), duplicates merged; a value equal to
    an edge goes to the bin above. When the top edge is the reference's maximum (many equal values, e.g. a
    constant column), one more edge just above it keeps larger values out of the maximum's bin."""
    present = reference[np.isfinite(reference)]
    if len(present) == 0:
        return np.empty(0)
    edges = np.unique(np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1]))
    top = present.max()
    if len(edges) == 0 or edges[-1] == top:  # a point mass at the maximum: keep values above it apart
        edges = np.append(edges, np.nextafter(top, np.inf))
    return edges


def _histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts per bin: len(edges) + 1 value bins (a value equal to an edge goes up), then one missing bin."""
    missing = ~np.isfinite(values)
    which = np.searchsorted(edges, values[~missing], side="right")
    counts = np.bincount(which, minlength=len(edges) + 1).astype(np.float64)
    return np.append(counts, float(missing.sum()))


def psi_numeric(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> tuple[float, int]:
    """(PSI, bins used) with bins at the reference's quantiles and missing values (NaN, ±inf) as their own bin."""
    reference = np.asarray(reference, dtype=np.float64)
    current = np.asarray(current, dtype=np.float64)
    edges = quantile_edges(reference, bins)
    ref_counts, cur_counts = _histogram(reference, edges), _histogram(current, edges)
    used = int(((ref_counts > 0) | (cur_counts > 0)).sum())
    return psi_from_counts(ref_counts, cur_counts), used


def ks_statistic(reference: np.ndarray, current: np.ndarray) -> float | None:
    """Two-sample Kolmogorov–Smirnov statistic (max distance of the empirical CDFs) over the present values;
    None when either side has none."""
    a = np.sort(np.asarray(reference, dtype=np.float64))
    b = np.sort(np.asarray(current, dtype=np.float64))
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) == 0 or len(b) == 0:
        return None
    points = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, points, side="right") / len(a)
    cdf_b = np.searchsorted(b, points, side="right") / len(b)
    return float(np.max(np.abs(cdf_a - cdf_b)))


def _missing_share(values: np.ndarray) -> float:
    return float((~np.isfinite(values)).mean()) if len(values) else 0.0


def numeric_drift(column: str, reference, current, bins: int, moderate_psi: float, drifted_psi: float,
                  kind: str = "numeric") -> ColumnDrift:
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    psi, used = psi_numeric(ref, cur, bins)
    return ColumnDrift(column, kind, psi, status_of(psi, moderate_psi, drifted_psi), ks=ks_statistic(ref, cur), bins=used,
                       missing_reference=_missing_share(ref), missing_current=_missing_share(cur))


def _is_missing(values: pd.Series) -> np.ndarray:
    return values.isna().to_numpy()


def categorical_drift(column: str, reference: pd.Series, current: pd.Series, max_categories: int, moderate_psi: float,
                      drifted_psi: float) -> ColumnDrift:
    """Bins: the reference's `max_categories` most frequent categories, "other" (the reference's rarer ones),
    "unseen" (categories the reference lacks) and missing."""
    ref = pd.Series(reference, dtype=object)
    cur = pd.Series(current, dtype=object)
    ref_missing, cur_missing = _is_missing(ref), _is_missing(cur)
    ref_present = ref[~ref_missing].astype(str)
    cur_present = cur[~cur_missing].astype(str)
    frequency = ref_present.value_counts()
    top = list(frequency.index[:max_categories])
    known = set(frequency.index)

    def counts(values: pd.Series, n_missing: int) -> np.ndarray:
        codes = pd.Categorical(values, categories=top).codes
        head = np.bincount(codes[codes >= 0], minlength=len(top)).astype(np.float64)
        rest = values[codes < 0]
        unseen = float((~rest.isin(known)).sum()) if len(rest) else 0.0
        other = float(len(rest)) - unseen
        return np.concatenate([head, [other, unseen, float(n_missing)]])

    ref_counts = counts(ref_present, int(ref_missing.sum()))
    cur_counts = counts(cur_present, int(cur_missing.sum()))
    psi = psi_from_counts(ref_counts, cur_counts)
    unseen_share = float(cur_counts[-2] / len(cur)) if len(cur) else 0.0
    used = int(((ref_counts > 0) | (cur_counts > 0)).sum())
    ref_total, cur_total = max(float(ref_counts.sum()), 1.0), max(float(cur_counts.sum()), 1.0)
    shares = tuple((str(name), float(ref_counts[i] / ref_total), float(cur_counts[i] / cur_total)) for i, name in enumerate(top))
    return ColumnDrift(column, "categorical", psi, status_of(psi, moderate_psi, drifted_psi), bins=used,
                       missing_reference=float(ref_missing.mean()) if len(ref) else 0.0,
                       missing_current=float(cur_missing.mean()) if len(cur) else 0.0, unseen_share=unseen_share,
                       categories=shares)


def text_lengths(values: pd.Series) -> np.ndarray:
    """Length in characters of each text; NaN where the text is missing."""
    series = pd.Series(values, dtype=object)
    missing = series.isna()
    lengths = np.full(len(series), np.nan)
    if (~missing).any():
        lengths[~missing.to_numpy()] = series[~missing].astype(str).str.len().to_numpy(dtype=np.float64)
    return lengths


def sample_rows(frame: pd.DataFrame, max_rows: int, seed: int = 0) -> pd.DataFrame:
    """A uniform sample of at most `max_rows` rows (the frame itself when it is small enough)."""
    if max_rows <= 0 or len(frame) <= max_rows:
        return frame
    rng = np.random.default_rng(seed)
    return frame.iloc[np.sort(rng.choice(len(frame), size=max_rows, replace=False))]


def measure_drift(reference: pd.DataFrame, current: pd.DataFrame, *, numeric: Sequence[str] = (), categorical: Sequence[str] = (),
                  text: Sequence[str] = (), reference_confidence: np.ndarray | None = None,
                  current_confidence: np.ndarray | None = None, bins: int = 10, max_categories: int = 50,
                  moderate_psi: float = 0.1, drifted_psi: float = 0.2, max_rows: int = 100_000, min_rows: int = 500,
                  reference_name: str = "labeled", confidence_reference: str = "", seed: int = 0) -> DriftReport:
    """Compare `current` (a window) with `reference` column by column; both are sampled to `max_rows` rows.

    The confidence is compared when both `reference_confidence` and `current_confidence` are given
    (`current_confidence` aligned with `current`'s rows). Fewer than `min_rows` rows on either side: nothing
    is compared (the report says why), since a PSI over a handful of rows is noise.
    """
    total = len(current)
    limits = {"reference": len(reference), "window": total}
    small = [f"{name} has {n:,} rows" for name, n in limits.items() if n < min_rows]
    if small:
        return DriftReport((), len(reference), total, total, moderate_psi, drifted_psi, reference_name, skipped=
                           " and ".join(small) + f", fewer than {min_rows:,}")
    if current_confidence is not None:
        current = current.assign(**{"__confidence__": np.asarray(current_confidence, dtype=np.float64)})
    ref = sample_rows(reference, max_rows, seed)
    cur = sample_rows(current, max_rows, seed + 1)
    columns: list[ColumnDrift] = []
    for name in numeric:
        columns.append(numeric_drift(name, pd.to_numeric(ref[name], errors="coerce"), pd.to_numeric(cur[name], errors="coerce"),
                                     bins, moderate_psi, drifted_psi))
    for name in categorical:
        columns.append(categorical_drift(name, ref[name], cur[name], max_categories, moderate_psi, drifted_psi))
    for name in text:
        columns.append(numeric_drift(name, text_lengths(ref[name]), text_lengths(cur[name]), bins, moderate_psi, drifted_psi,
                                     kind="text"))
    compared_confidence = ""
    scored = cur["__confidence__"].to_numpy() if current_confidence is not None else np.empty(0)
    scored = scored[np.isfinite(scored)]  # NaN: a row the reference's model did not score, left out
    if reference_confidence is not None and len(reference_confidence) >= min_rows and len(scored) >= min_rows:
        columns.append(numeric_drift(CONFIDENCE, np.asarray(reference_confidence, dtype=np.float64),
                                     scored, bins, moderate_psi, drifted_psi, kind="confidence"))
        compared_confidence = confidence_reference
    notes: tuple[str, ...] = ()
    if len(cur) < total:
        notes = (f"The window's {total:,} rows were sampled uniformly to {len(cur):,} (capture.drift.sample_rows).",)
    return DriftReport(tuple(columns), len(ref), len(cur), total, moderate_psi, drifted_psi, reference_name,
                       compared_confidence, notes=notes)


def confidence_sketch(confidence: np.ndarray, points: int = 1001) -> list[float]:
    """A compact stand-in for a confidence distribution (its `points` quantiles) to keep as a later reference."""
    values = np.asarray(confidence, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return []
    return [float(v) for v in np.quantile(values, np.linspace(0, 1, points))]


def brief(report: dict) -> str:
    """The cycle line's drift part, from a report's `to_dict()` (as reports/drift.jsonl keeps it): e.g.
    'drift 2/37 drifted (x1, x3), confidence PSI 0.22', 'drift 0/37', 'drift not measured (...)'."""
    if report.get("skipped"):
        return f"drift not measured ({report['skipped']})"
    columns = report.get("columns", [])
    drifted = report.get("drifted", [])
    text = f"drift {len(drifted)}/{len(columns)}" + (" drifted (" + ", ".join(drifted[:3])
                                                     + (" …" if len(drifted) > 3 else "") + ")" if drifted else "")
    confidence = next((c for c in columns if c.get("kind") == "confidence"), None)
    if confidence is not None:
        text += f", confidence PSI {confidence['psi']:.2f}"
    return text
