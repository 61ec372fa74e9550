"""Assembles /api/v2."""

from fastapi import APIRouter

from app.api.v2.routes import items

router = APIRouter()
router.include_router(items.router)
