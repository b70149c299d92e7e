"""fuseface.nn.backbones."""
