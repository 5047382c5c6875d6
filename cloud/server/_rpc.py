"""Error mapping and metrics for every handler: callers see proper status codes.

Store outages → UNAVAILABLE (clients retry), unknown rows → NOT_FOUND, uniqueness
conflicts → ALREADY_EXISTS, auth refusals → their own code; anything unexpected is
logged with its traceback and answered INTERNAL without leaking details.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from cloud.server.auth import AuthError
from cloud.store import ConflictError, NotFoundError, StoreUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")


class RpcError(Exception):
    """Raise in a handler to answer with `code` and `message`."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _classify(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    if isinstance(exc, (AuthError, RpcError)):
        return exc.code, str(exc)
    if isinstance(exc, StoreUnavailable):
        return grpc.StatusCode.UNAVAILABLE, f"the control-plane database is unavailable: {exc}"
    if isinstance(exc, NotFoundError):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    if isinstance(exc, ConflictError):
        return grpc.StatusCode.ALREADY_EXISTS, str(exc)
    return None


def unary(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: Any) -> T:
        start = time.perf_counter()
        code = "OK"
        try:
            return await fn(self, request, context)
        except Exception as exc:
            mapped = _classify(exc)
            if mapped is None:
                if isinstance(exc, grpc.aio.AbortError):
                    code = "ABORTED_BY_HANDLER"
                    raise
                log.exception("%s failed", name)
                mapped = (grpc.StatusCode.INTERNAL, f"{name} failed on the server; see its log")
            code = mapped[0].name
            await context.abort(mapped[0], mapped[1])
            raise  # unreachable: abort raises
        finally:
            self.plane.metrics.observe(name, code, time.perf_counter() - start)

    return wrapper


def stream(fn: Callable[..., AsyncIterator[T]]) -> Callable[..., AsyncIterator[T]]:
    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: Any) -> AsyncIterator[T]:
        start = time.perf_counter()
        code = "OK"
        try:
            async for item in fn(self, request, context):
                yield item
        except Exception as exc:
            mapped = _classify(exc)
            if mapped is None:
                if isinstance(exc, grpc.aio.AbortError):
                    raise
                log.exception("%s failed", name)
                mapped = (grpc.StatusCode.INTERNAL, f"{name} failed on the server; see its log")
            code = mapped[0].name
            await context.abort(mapped[0], mapped[1])
        finally:
            self.plane.metrics.observe(name, code, time.perf_counter() - start)

    return wrapper
