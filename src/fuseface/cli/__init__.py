"""fuseface.cli."""
