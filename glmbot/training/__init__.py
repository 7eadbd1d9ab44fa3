"""Training: data loading, the prefix training loop, metrics and the forgetting probe."""
