"""fuseface.nn.fusion."""
