"""GET /dead-letters, GET /dead-letters/{seq}, POST /dead-letters/{seq}/replay."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from fhirschema_bus.contracts import DeadLetter
from gateway.deps import ContainerDep
from gateway.errors import NotFound
from gateway.security import require
from gateway.service.auth import DEAD_LETTERS_ADMIN

router = APIRouter(prefix="/dead-letters", tags=["dead letters"], dependencies=[require(DEAD_LETTERS_ADMIN)])


@router.get("", response_model=list[DeadLetter])
async def list_dead_letters(
    c: ContainerDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[int, Query(ge=0, description="stream sequence to continue after")] = 0,
) -> list[DeadLetter]:
    """Oldest first; page with ?after=<last stream_seq>."""
    return await c.dead_letters.list(limit, after)


@router.get("/{seq}", response_model=DeadLetter)
async def get_dead_letter(seq: int, c: ContainerDep) -> DeadLetter:
    letter = await c.dead_letters.get(seq)
    if letter is None:
        raise NotFound(f"no dead letter with sequence {seq}")
    return letter


@router.post("/{seq}/replay", status_code=202)
async def replay_dead_letter(seq: int, c: ContainerDep) -> dict[str, Any]:
    """Publish the original message again to its original subject."""
    letter = await c.dead_letters.replay(seq)
    if letter is None:
        raise NotFound(f"no dead letter with sequence {seq}")
    return {"replayed": seq, "subject": letter.subject}
