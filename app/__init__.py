"""fastapi-ml-service: an async FastAPI service that serves ML models to authenticated users."""
