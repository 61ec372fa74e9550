"""The routers of /api/v1, in the order they are matched."""

from fastapi import APIRouter

from app.api.v1.routes import (
    api_keys,
    auth,
    items,
    jobs,
    model_repository,
    models,
    predict,
    predictions,
    users,
)

# Included one by one into the app (app.main), not through an /api/v1 router of routers: each level
# of included routers is matched again at every request, which cost about 10% of a cached read
# with FastAPI 0.165 (docs/performance.md). Matched in this order: the hottest paths first (no two
# routers share a path, so the order changes nothing else).
routers: tuple[APIRouter, ...] = (
    items.router,
    users.router,
    auth.router,
    predict.router,
    models.router,
    predictions.router,
    api_keys.router,
    model_repository.router,
    jobs.router,
)
