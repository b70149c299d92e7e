"""fuseface.nn.losses."""
