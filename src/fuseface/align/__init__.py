"""fuseface.align."""
