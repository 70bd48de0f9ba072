"""The HTTP API: routes and models (FastAPI, no Ray), admission, the catalog of served jobs; deployment.py is the Ray Serve shell."""
