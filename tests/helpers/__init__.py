"""Helpers shared by several test packages: the fake world (fast evaluator, tiny models) and its CLI entry."""
