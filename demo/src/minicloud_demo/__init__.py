"""A simulated month of a GPU cloud, through the public API only, and its report."""
