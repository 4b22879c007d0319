"""The catalog of what a spec may name."""
