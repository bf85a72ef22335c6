"""The judges of a label and how they are run: CP, ES, Contrast and VQA (one module each), their rules and
default thresholds (rules, thresholds), calibration against human verdicts (judges), running them over a
run (run) and over another labeller's labels on the same units (sources)."""
