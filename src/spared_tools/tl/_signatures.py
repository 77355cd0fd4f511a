"""Old forms of the models' signatures: each is a ``TypeError`` that names the new form (issue 18).

Decorators that keep the wrapped function's signature and docstring (``functools.wraps``), so the
documentation and the structure tests see the new signature only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

__all__ = ["binds_data_in_train", "renamed_keywords"]

F = TypeVar("F", bound=Callable[..., None])


def binds_data_in_train(new_form: str, moved: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Decorator of a model's ``__init__``: data given to the constructor is a ``TypeError`` naming ``new_form``.

    The wrapped constructor keeps its signature and docstring (``functools.wraps``).

    Parameters
    ----------
    new_form
        The call to use instead, e.g. ``"SpackleModel(seed=0).train(adata, layer=...)"``.
    moved
        Keywords that moved from the constructor to ``train`` (refused with the same message).

    Returns
    -------
    The decorator.
    """

    def deco(init: F) -> F:
        @functools.wraps(init)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
            given = [k for k in kwargs if k in moved]
            if args or given:
                what = "an AnnData" if args else ", ".join(f"{k}=" for k in given)
                raise TypeError(
                    f"{type(self).__name__}() no longer takes {what}: the constructor takes the network's "
                    f"settings and the seed, and train(adata, ...) binds the data. Use {new_form}."
                )
            init(self, **kwargs)

        return wrapper  # type: ignore[return-value]

    return deco


P = ParamSpec("P")
R = TypeVar("R")


def renamed_keywords(**old_to_new: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator: a keyword given under its old name is a ``TypeError`` naming the new one (same meaning).

    Parameters
    ----------
    **old_to_new
        Old keyword → new keyword, e.g. ``mask_prob="mask_frac"``.

    Returns
    -------
    The decorator (signature and docstring of the function kept).
    """

    def deco(func: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            for old, new in old_to_new.items():
                if old in kwargs:
                    raise TypeError(
                        f"{func.__qualname__}() takes {new}= instead of {old}= (same meaning): pass "
                        f"{new}={kwargs[old]!r}."
                    )
            return func(*args, **kwargs)

        return wrapper

    return deco
