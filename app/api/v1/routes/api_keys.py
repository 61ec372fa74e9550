"""/api/v1/api-keys: the caller's keys for their programs; admins manage anyone's under
/api/v1/users/{user_id}/api-keys. Only a person logged in manages keys: a key cannot make, list or
revoke keys."""

from __future__ import annotations

from fastapi import APIRouter, Path, status
from pydantic import TypeAdapter

from app.api.deps import AdminUser, ApiKeyServiceDep, CurrentUser
from app.api.v1 import PREFIX
from app.schemas.api_key import ApiKeyCreate, ApiKeyCreated, ApiKeyPublic
from app.schemas.common import AUTHENTICATED_ERRORS, JSON_BODY_ERRORS, problem_responses

router = APIRouter(tags=["api-keys"], responses=problem_responses(*AUTHENTICATED_ERRORS))

KeyId = Path(ge=1, le=2**31 - 1, description="The key's id.")
UserId = Path(ge=1, le=2**31 - 1, description="The user's id.")
KeyList = TypeAdapter(list[ApiKeyPublic])


@router.post(
    f"{PREFIX}/api-keys",
    status_code=status.HTTP_201_CREATED,
    summary="Make an API key",
    responses=problem_responses(409, *JSON_BODY_ERRORS),
)
async def create_api_key(body: ApiKeyCreate, user: CurrentUser, keys: ApiKeyServiceDep) -> ApiKeyCreated:
    """The answer holds the key itself (`key`): store it now, it is never shown again. The `admin`
    scope is for admins' keys only (403). A user holds at most `API_KEYS_PER_USER` live keys (20 by
    default): one more is a 409 (`too-many-api-keys`) until one is revoked or expires."""
    made = await keys.create(user.id, user.is_admin, body.name, body.scopes, body.expires_in_days)
    return ApiKeyCreated(**ApiKeyPublic.model_validate(made.key).model_dump(), key=made.secret)


@router.get(f"{PREFIX}/api-keys", summary="The caller's API keys")
async def list_api_keys(user: CurrentUser, keys: ApiKeyServiceDep) -> list[ApiKeyPublic]:
    """Newest first, revoked ones included; never the secret."""
    return KeyList.validate_python(await keys.of_user(user.id))


@router.delete(
    f"{PREFIX}/api-keys/{{key_id}}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Revoke an API key",
    responses=problem_responses(404, 422),
)
async def revoke_api_key(user: CurrentUser, keys: ApiKeyServiceDep, key_id: int = KeyId) -> None:
    """Refused from the next request on, on every replica. Another user's key is a 404."""
    await keys.revoke(user.id, key_id)


@router.get(
    f"{PREFIX}/users/{{user_id}}/api-keys",
    summary="A user's API keys (admin)",
    responses=problem_responses(404, 422),
)
async def list_user_api_keys(
    _admin: AdminUser, keys: ApiKeyServiceDep, user_id: int = UserId
) -> list[ApiKeyPublic]:
    return KeyList.validate_python(await keys.of_user(user_id, must_exist=True))


@router.delete(
    f"{PREFIX}/users/{{user_id}}/api-keys/{{key_id}}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Revoke a user's API key (admin)",
    responses=problem_responses(404, 422),
)
async def revoke_user_api_key(
    _admin: AdminUser, keys: ApiKeyServiceDep, user_id: int = UserId, key_id: int = KeyId
) -> None:
    await keys.revoke(user_id, key_id)
