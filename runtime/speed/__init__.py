"""On-device speed: the speed report's format and binding (report.py), the measurement (harness.py)
and where it runs (backends.py). `modelspec bench-device` (runtime/cli/speed.py) writes reports; the
gates job and `modelspec verify --speed-report` read them (docs/speed.md)."""
