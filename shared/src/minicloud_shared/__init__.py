"""minicloud's shared building blocks.

Infrastructure only — contracts, the exactly-once Redis Streams runtime, logging,
settings and the clock. Business logic lives in the services.
"""

__version__ = "0.1.0"
