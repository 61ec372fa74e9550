"""/api/v1."""

# Each route module's router carries its full prefix, so a route's `path` is its whole URL template
# (the access log and metrics label requests by it).
PREFIX = "/api/v1"
