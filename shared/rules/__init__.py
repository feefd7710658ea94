"""Decisions on data, no I/O of their own: guards, selection, sweep policy, alerts and budgets, confirmation."""
