"""Test support: a real Redis for integration and contract tests."""
