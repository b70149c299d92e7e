"""fuseface.data."""
