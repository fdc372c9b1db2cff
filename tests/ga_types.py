"""The official GA Realtime client event types (openai package, tests only), as a strict adapter."""

from __future__ import annotations

import typing
from typing import Annotated, Any, Union

from openai.types.realtime import RealtimeClientEventParam
from pydantic import ConfigDict, Field, TypeAdapter


def discriminated(alias: Any) -> Any:
    """The SDK's union as a real pydantic discriminated union (its own tag is ignored)."""
    if typing.get_origin(alias) is Annotated:
        alias = typing.get_args(alias)[0]
    return Annotated[Union[typing.get_args(alias)], Field(discriminator="type")]  # noqa: UP007


# Strict: unknown keys (for example the beta `modalities`) are errors.
GA_CLIENT_STRICT: TypeAdapter[Any] = TypeAdapter(
    discriminated(RealtimeClientEventParam), config=ConfigDict(extra="forbid")
)
