"""Column names shared by the stages, in one place.

Every frame the loop passes between stages names its columns with these: the prediction log
(README, "The prediction-log contract"), the pool, batches and their export plans, the vendor's
answers and the final labels.
"""

from __future__ import annotations

ITEM_ID = "item_id"  # the item a prediction, an answer or a label is about
LABEL = "label"  # a label: an annotator's answer, a final label, the labelled set's truth
ANNOTATOR_ID = "annotator_id"  # who gave an answer (normalised on import)

# The prediction log's own columns.
PREDICTION_ID = "prediction_id"
TS = "ts"
MODEL_VERSION = "model_version"
PREDICTED = "predicted"
CONFIDENCE = "confidence"
PROBA_PREFIX = "proba_"  # one proba_<class> column per class
