"""/api/v2 route modules."""
