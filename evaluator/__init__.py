"""evaluator: not yet built (see ARCHITECTURE.md)."""
