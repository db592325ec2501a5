"""Side-by-side benchmarks against sbi. Run ``python -m benchmarks`` (or ``./run bench``)."""
