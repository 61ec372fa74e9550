"""HTTP layer: routers per API version and the shared dependencies."""
