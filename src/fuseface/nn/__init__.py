"""fuseface.nn."""
