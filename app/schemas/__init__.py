"""Pydantic request and response schemas: the wire format, separate from the ORM models."""
