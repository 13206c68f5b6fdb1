"""Training: losses, negative mining, the epoch loop with early stopping and exact resume."""
