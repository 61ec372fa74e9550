"""HTTP plumbing: middleware, load shedding, rate limits, problem details, redirects, app state."""
