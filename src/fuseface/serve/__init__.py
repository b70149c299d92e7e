"""The HTTP service (FastAPI): compare, embed, enrol, search, delete over a gallery.

``create_app(...)`` builds the application (:mod:`fuseface.serve.app`); ``fuseface serve`` runs it
with uvicorn. Needs the ``serve`` extra (fastapi, uvicorn, python-multipart).
"""
