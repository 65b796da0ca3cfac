"""Command-line tools built on the library: deployment-precision search, device calibration."""
