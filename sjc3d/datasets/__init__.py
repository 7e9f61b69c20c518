"""Training data for view-conditioned priors: procedural objects and the Zero-1-to-3 layout."""
