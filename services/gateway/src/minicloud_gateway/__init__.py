"""minicloud gateway service: identity and the public API (reads from projections, writes as commands)."""
