"""fuseface.nn.layers."""
