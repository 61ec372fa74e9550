"""Assembles /api/v1."""

from fastapi import APIRouter

from app.api.v1.routes import auth, items, models, predict, predictions, users

router = APIRouter()
# Matched in this order, one router after another: the hottest paths first (no two routers share
# a path, so the order changes nothing else; docs/performance.md).
router.include_router(items.router)
router.include_router(users.router)
router.include_router(auth.router)
router.include_router(predict.router)
router.include_router(models.router)
router.include_router(predictions.router)
