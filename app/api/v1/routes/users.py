"""/api/v1/users: the caller's own account, and user administration for admins."""

from __future__ import annotations

from fastapi import APIRouter, Path, Response, status
from pydantic import TypeAdapter

from app.api.deps import AdminUser, CurrentUser, OffsetPageDep, UserServiceDep
from app.api.v1 import PREFIX
from app.core.errors import Forbidden
from app.schemas.common import AUTHENTICATED_ERRORS, JSON_BODY_ERRORS, problem_responses
from app.schemas.user import PasswordChange, UserPublic, UserUpdateAdmin, UserUpdateMe

router = APIRouter(
    prefix=f"{PREFIX}/users", tags=["users"], responses=problem_responses(*AUTHENTICATED_ERRORS)
)

UserId = Path(ge=1, le=2**31 - 1, description="The user's id.")
# A page's rows validated in one call (not one `model_validate` per row).
UserList = TypeAdapter(list[UserPublic])


@router.get("/me", summary="The caller's account")
async def read_me(user: CurrentUser) -> UserPublic:
    return UserPublic.model_validate(user)


@router.patch(
    "/me", summary="Update the caller's account", responses=problem_responses(409, *JSON_BODY_ERRORS)
)
async def update_me(body: UserUpdateMe, user: CurrentUser, users: UserServiceDep) -> UserPublic:
    """Needs the current password (401 if wrong, nothing changed)."""
    values = body.model_dump(exclude_unset=True, exclude={"current_password"})
    updated = await users.update_me(user, body.current_password, values)
    return UserPublic.model_validate(updated)


@router.post(
    "/me/password",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,  # no body: no Content-Type either
    summary="Change the caller's password",
    responses=problem_responses(*JSON_BODY_ERRORS),
)
async def change_password(body: PasswordChange, user: CurrentUser, users: UserServiceDep) -> None:
    """Needs the current password. Every login session of the user ends; log in again."""
    await users.change_password(user, body.current_password, body.new_password)


@router.get("", summary="List users (admin)", responses=problem_responses(403, 422))
async def list_users(
    _admin: AdminUser, users: UserServiceDep, page: OffsetPageDep, response: Response
) -> list[UserPublic]:
    rows, total = await users.page(page.offset, page.limit)
    response.headers["X-Total-Count"] = str(total)
    return UserList.validate_python(rows)


@router.get(
    "/{user_id}",
    summary="Read a user (admin, or the user themself)",
    responses=problem_responses(403, 404, 422),
)
async def read_user(user: CurrentUser, users: UserServiceDep, user_id: int = UserId) -> UserPublic:
    if user.id != user_id and not user.is_admin:
        raise Forbidden("Only admins may read other users.")
    return UserPublic.model_validate(await users.get(user_id))


@router.patch(
    "/{user_id}",
    summary="Update a user (admin)",
    responses=problem_responses(403, 404, 409, *JSON_BODY_ERRORS),
)
async def update_user(
    body: UserUpdateAdmin, admin: AdminUser, users: UserServiceDep, user_id: int = UserId
) -> UserPublic:
    """Deactivating a user ends all their login sessions at once."""
    updated = await users.update(user_id, body.model_dump(exclude_unset=True), actor=admin)
    return UserPublic.model_validate(updated)


@router.delete(
    "/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,  # no body: no Content-Type either
    summary="Delete a user and their items (admin)",
    responses=problem_responses(403, 404, 409, 422),
)
async def delete_user(admin: AdminUser, users: UserServiceDep, user_id: int = UserId) -> None:
    await users.delete(user_id, actor=admin)
