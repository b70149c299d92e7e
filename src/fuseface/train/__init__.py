"""fuseface.train."""
