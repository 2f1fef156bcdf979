"""minicloud host agent."""
