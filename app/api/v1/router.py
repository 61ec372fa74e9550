"""Assembles /api/v1."""

from fastapi import APIRouter

from app.api.v1.routes import auth, items, models, predict, predictions, users

router = APIRouter()
router.include_router(auth.router)
router.include_router(users.router)
router.include_router(items.router)
router.include_router(predict.router)
router.include_router(models.router)
router.include_router(predictions.router)
