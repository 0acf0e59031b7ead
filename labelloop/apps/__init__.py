"""Entry points built on the stages: workspace creation, online serving and its write-ahead log, the simulator,
lineage and reports."""
