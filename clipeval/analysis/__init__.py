"""What the pages, the CLI and the report compute from stored scores, with no model: a run's verdicts at
given thresholds beside their baselines (runview), agreement metrics and their intervals, headlines and
weak-judge flags, threshold sweeps, label sources compared (sources), human verdict files (humans), every
run side by side (runs) and the ImageNet-class sanity check (imagenet)."""
