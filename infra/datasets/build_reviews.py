"""Build labelloop/resources/reviews.parquet, the text demo's dataset (`labelloop demo --dataset reviews`).

Source: ../shared/datasets/fine_foods.parquet — 5,000 Amazon fine-food reviews (`text`, `label` great/other).
The shipped file adds a `review_id` column, so the demo also shows an id column kept out of the features.

    .venv/bin/python infra/datasets/build_reviews.py ../shared/datasets/fine_foods.parquet labelloop/resources/reviews.parquet
"""

import sys

import pandas as pd


def main(source: str, target: str) -> None:
    frame = pd.read_parquet(source)
    out = pd.DataFrame({
        "review_id": [f"R{i:05d}" for i in range(len(frame))],
        "text": frame["text"].astype(str),
        "label": frame["label"].astype(str),
    })
    out.to_parquet(target, index=False, compression="zstd")
    print(f"{target}: {len(out)} rows, classes {out['label'].value_counts().to_dict()}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
