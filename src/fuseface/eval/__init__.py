"""fuseface.eval."""
