"""/api/v1/auth: register, log in, refresh, log out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response, status
from fastapi.security import OAuth2PasswordRequestForm

from app.api.deps import AuthServiceDep, CurrentUser
from app.api.v1 import PREFIX
from app.http.ratelimit import auth_rate_limit
from app.schemas.auth import RefreshRequest, TokenPair
from app.schemas.common import AUTHENTICATED_ERRORS, JSON_BODY_ERRORS, problem_responses
from app.schemas.user import UserCreate, UserPublic
from app.services.auth import IssuedTokens

router = APIRouter(prefix=f"{PREFIX}/auth", tags=["auth"])


def _pair(tokens: IssuedTokens) -> TokenPair:
    return TokenPair(
        access_token=tokens.access_token, expires_in=tokens.expires_in, refresh_token=tokens.refresh_token
    )


@router.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    summary="Register a user",
    operation_id="register",
    responses={
        **problem_responses(409, 429, 503, *JSON_BODY_ERRORS),
        # OpenAPI links: how a client (or a stateful fuzzer) goes on from a response.
        201: {
            "links": {
                "LogIn": {
                    "operationId": "login",
                    "requestBody": {
                        "username": "$request.body#/email",
                        "password": "$request.body#/password",
                    },
                }
            }
        },
    },
    dependencies=[Depends(auth_rate_limit("register"))],
)
async def register(body: UserCreate, auth: AuthServiceDep) -> UserPublic:
    """Create an account. The email is case-insensitive and unique."""
    user = await auth.register(body.email, body.password)
    return UserPublic.model_validate(user)


@router.post(
    "/token",
    summary="Log in (OAuth2 password flow)",
    operation_id="login",
    responses={
        **problem_responses(400, 401, 413, 422, 429, 503),
        200: {
            "links": {
                "Refresh": {
                    "operationId": "refresh",
                    "requestBody": {"refresh_token": "$response.body#/refresh_token"},
                }
            }
        },
    },
    dependencies=[Depends(auth_rate_limit("login"))],
)
async def login(form: Annotated[OAuth2PasswordRequestForm, Depends()], auth: AuthServiceDep) -> TokenPair:
    """Exchange email (as `username`) and password for an access token and a refresh token."""
    return _pair(await auth.login(form.username, form.password))


@router.post(
    "/refresh",
    summary="Rotate a refresh token",
    operation_id="refresh",
    # No rate limit: a refresh token has 256 random bits, and each one works once.
    responses=problem_responses(401, 503, *JSON_BODY_ERRORS),
)
async def refresh(body: RefreshRequest, auth: AuthServiceDep) -> TokenPair:
    """Spend a refresh token for a new pair. A token used twice ends its whole login session."""
    return _pair(await auth.refresh(body.refresh_token))


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,  # no body: no Content-Type either
    summary="Log out",
    responses=problem_responses(*AUTHENTICATED_ERRORS),
)
async def logout(user: CurrentUser, auth: AuthServiceDep) -> None:
    """End this login session: its refresh tokens and access tokens stop working."""
    await auth.logout(user)
