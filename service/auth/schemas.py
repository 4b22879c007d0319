"""Request and response bodies of /v1/keys. A key's token appears in exactly one body, the
answer to its creation; no body ever carries a hash."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from service.db.models import ApiKey
from service.schemas import Text

Owner = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.@+-]+$",
        description="Who the key acts as: the owner of the jobs and sweeps it creates.",
    ),
]


class KeyCreate(BaseModel):
    """A key to create for ``owner``; ``admin`` keys see and manage every owner's objects and keys."""

    model_config = ConfigDict(extra="forbid")

    owner: Owner
    name: Annotated[Text, Field(min_length=1, max_length=64, description="What it is for: 'laptop', 'ci'.")] | None = (
        None
    )
    admin: StrictBool = False


class KeyOut(BaseModel):
    id: int
    owner: str
    name: str | None
    prefix: str = Field(description="The token's first characters, to tell keys apart.")
    admin: bool
    created_at: dt.datetime
    revoked_at: dt.datetime | None

    @classmethod
    def of(cls, key: ApiKey) -> KeyOut:
        return cls(
            id=key.id,
            owner=key.owner,
            name=key.name,
            prefix=key.prefix,
            admin=key.admin,
            created_at=key.created_at,
            revoked_at=key.revoked_at,
        )


class KeyCreated(KeyOut):
    token: str = Field(description="The bearer token. Shown this once: only its hash is stored.")


class KeyPage(BaseModel):
    items: list[KeyOut]
