"""/api/v2: cursor-paginated resources. v1 stays as it is."""

PREFIX = "/api/v2"
