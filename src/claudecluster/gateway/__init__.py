"""The HTTP/WebSocket gateway: a thin front door over the front-door service.

``create_app`` builds the starlette application, ``serve_app`` serves one with uvicorn,
``open_gateway`` does both on a cluster connection, ``openapi_document`` is its OpenAPI
3.1 document.
"""

from __future__ import annotations

from claudecluster.gateway.app import OPERATIONS, create_app
from claudecluster.gateway.openapi import openapi_document, openapi_text
from claudecluster.gateway.server import open_gateway, serve_app

__all__ = [
    "OPERATIONS",
    "create_app",
    "open_gateway",
    "openapi_document",
    "openapi_text",
    "serve_app",
]
