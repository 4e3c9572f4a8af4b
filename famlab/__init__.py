"""famlab."""
