"""The records stages share: batch status, the pool, the review queue."""

import pandas as pd

from labelloop.batches import ReviewQueue
from labelloop.domain.quality import REASON_MODEL_CONTRADICTS, REASON_NO_AGREEMENT


def test_review_queue_add_is_idempotent_and_tracks_sending(tmp_path):
    queue = ReviewQueue(tmp_path / "review.json")
    entries = pd.DataFrame({"item_id": ["x", "y"], "reason": [REASON_NO_AGREEMENT, REASON_MODEL_CONTRADICTS]})
    assert queue.add("b1", entries) == 2
    assert queue.add("b1", entries) == 0
    assert ReviewQueue(tmp_path / "review.json").pending() == ["x", "y"]
    queue.mark_sent(["x"], "b2")
    assert queue.pending() == ["y"]
    queue.resolve(["x"])
    frame = ReviewQueue(tmp_path / "review.json").frame().set_index("item_id")
    assert frame.loc["x", "status"] == "resolved" and frame.loc["x", "sent_batch"] == "b2"


def test_review_queue_stops_resending_an_item_after_max_sends(tmp_path):
    queue = ReviewQueue(tmp_path / "review.json")
    flagged = pd.DataFrame({"item_id": ["x"], "reason": [REASON_MODEL_CONTRADICTS]})
    queue.add("b1", flagged)
    queue.mark_sent(["x"], "b2")
    queue.add("b2", flagged)  # the re-send came back flagged again
    assert queue.pending(max_sends=2) == ["x"]
    queue.mark_sent(["x"], "b3")
    queue.add("b3", flagged)
    assert queue.pending(max_sends=2) == [] and queue.pending() == ["x"]  # left to a human reviewer
