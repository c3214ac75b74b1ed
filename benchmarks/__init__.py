"""Side-by-side benchmarks of MMMModal against its peers; run them all with `python -m benchmarks`."""
