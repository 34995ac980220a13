"""Managed mode: xproxy_ tokens, pipes, server-side provider keys, hard budgets."""
