"""End-to-end experiments on embedded data: :mod:`fuseface.experiments.demo` (``fuseface demo``)."""
