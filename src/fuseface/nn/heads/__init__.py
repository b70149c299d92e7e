"""fuseface.nn.heads."""
