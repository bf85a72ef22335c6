"""Where the per-image work runs: device and dtype placement with OOM halving (device), decoding and
batched forward passes (batches), the local and Ray engines (engine, ray_map) and progress bars (progress)."""
