"""Prefect tasks: each a few lines calling one `labelloop` function. Retries with backoff only on I/O."""
