"""User schemas. None of them has a password-hash field: the hash never leaves the data layer."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, EmailStr, Field, StrictBool

from app.core.emails import normalise_email
from app.schemas.common import NO_NULL_IN_SCHEMA, RequestModel, ResponseModel, reject_null

PASSWORD_MIN_LENGTH = 8
PASSWORD_MAX_LENGTH = 128


# EmailStr checks the address (and documents `format: email`); `normalise_email` then gives the one
# stored form (NFKC, lower-case, IDNA), the same as every other entry point (app.core.emails).
Email = Annotated[EmailStr, AfterValidator(normalise_email), Field(max_length=320)]
Password = Annotated[
    str,
    Field(
        min_length=PASSWORD_MIN_LENGTH,
        max_length=PASSWORD_MAX_LENGTH,
        description=f"{PASSWORD_MIN_LENGTH} to {PASSWORD_MAX_LENGTH} characters.",
    ),
]


class UserCreate(RequestModel):
    email: Email
    password: Password


# Fields left out stay as they are; none of them may be set to null.
class UserUpdateMe(RequestModel):
    # Changing the email changes what logs in: like a password change, it needs the current
    # password (a stolen access token alone must not take the account over).
    current_password: Annotated[
        str,
        Field(
            max_length=PASSWORD_MAX_LENGTH,
            description="The caller's current password; a wrong one is a 401 and changes nothing.",
        ),
    ]
    email: Annotated[Email | None, AfterValidator(reject_null), NO_NULL_IN_SCHEMA] = None


class UserUpdateAdmin(RequestModel):
    email: Annotated[Email | None, AfterValidator(reject_null), NO_NULL_IN_SCHEMA] = None
    is_active: Annotated[StrictBool | None, AfterValidator(reject_null), NO_NULL_IN_SCHEMA] = None
    is_admin: Annotated[StrictBool | None, AfterValidator(reject_null), NO_NULL_IN_SCHEMA] = None


class PasswordChange(RequestModel):
    current_password: Annotated[str, Field(max_length=PASSWORD_MAX_LENGTH)]
    new_password: Password


class UserPublic(ResponseModel):
    id: int
    email: str
    is_active: bool
    is_admin: bool
    created_at: datetime
