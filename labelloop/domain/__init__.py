"""Pure logic: acquisition, label quality, the gate, stop rules, metrics, calibration. No I/O to outside tools, no Prefect."""
