"""fuseface.infer."""
