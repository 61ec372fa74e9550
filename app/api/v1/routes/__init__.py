"""/api/v1 route modules, one per URL prefix."""
