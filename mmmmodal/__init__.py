"""Command-line tools and applications around the MMMModal model (not shipped with checkpoints)."""
