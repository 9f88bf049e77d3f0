"""Helpers shared by test suites (model builders, ...)."""
