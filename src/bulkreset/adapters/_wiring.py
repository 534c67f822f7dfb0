"""Building a :class:`~bulkreset.ResetService` over a store that must be closed on failure.

Private to the shipped adapters' ``open_service`` functions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._service import ResetService
from ..errors import InvalidInputError
from ..ports import Notifier, SessionStore, Storage

__all__ = ["service_over"]


def service_over(
    store: Storage,
    notifier: Notifier,
    sessions: SessionStore,
    *,
    close: Callable[[], None],
    **options: Any,
) -> ResetService:
    """The service over *store* and its ports; *close* releases the store if that fails.

    Raises:
        InvalidInputError: an option ``ResetService`` does not have, or a bad value.
    """
    try:
        return ResetService(store, notifier, sessions, **options)
    except TypeError as exc:  # an option ResetService does not have
        close()
        raise InvalidInputError(f"bad option: {exc}") from None
    except BaseException:
        close()
        raise
