"""The routers of /api/v2 (included one by one into the app, as /api/v1's)."""

from fastapi import APIRouter

from app.api.v2.routes import items

routers: tuple[APIRouter, ...] = (items.router,)
