"""The FastAPI application factory (``create_app``)."""

from service.api import create_app

__all__ = ["create_app"]
