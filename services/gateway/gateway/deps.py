"""Typed FastAPI dependencies: the container and its services, taken from app.state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.requests import HTTPConnection

from gateway.bootstrap import Container
from gateway.ports import JobStore
from gateway.service.conversion import ConversionService
from gateway.service.ingest import IngestService
from gateway.service.validation import ValidationService


async def get_container(conn: HTTPConnection) -> Container:
    return conn.app.state.container


ContainerDep = Annotated[Container, Depends(get_container)]


async def get_validation(request: Request) -> ValidationService:
    return request.app.state.container.validation


async def get_conversion(request: Request) -> ConversionService:
    return request.app.state.container.conversion


async def get_ingest(request: Request) -> IngestService:
    return request.app.state.container.ingest


async def get_jobs(request: Request) -> JobStore:
    return await request.app.state.container.jobs()


ValidationDep = Annotated[ValidationService, Depends(get_validation)]
ConversionDep = Annotated[ConversionService, Depends(get_conversion)]
IngestDep = Annotated[IngestService, Depends(get_ingest)]
JobsDep = Annotated[JobStore, Depends(get_jobs)]
