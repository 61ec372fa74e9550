"""Business logic, testable without HTTP: services raise domain errors, never HTTPException."""
