"""Adapters to outside tools: MLflow (tracking), git + DVC (versioning), Great Expectations (validation),
annotation vendors, Dask."""
