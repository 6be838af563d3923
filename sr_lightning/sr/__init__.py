"""Symbolic regression: expression trees, the BasicSR search and its target problems."""
