"""trainer: not yet built (see ARCHITECTURE.md)."""
