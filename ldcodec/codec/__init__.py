"""Models: transforms, variable-rate gains, and the reproducible entropy parameters."""
