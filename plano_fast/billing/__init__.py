"""The billing pipeline: usage queue -> flusher -> store; pricing; budgets."""
