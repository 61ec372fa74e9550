"""Database queries, one repository per aggregate. No Pydantic and no HTTP here."""
