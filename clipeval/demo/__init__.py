"""The offline demo: its probe of shipped and synthetic images (probe) and the build of its runs,
evaluations and calibration beside the app (build)."""
