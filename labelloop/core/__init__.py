"""Process and durability primitives every layer uses: atomic files, the workspace lock, confined file access,
redaction, retries, thread policy, crash points."""
