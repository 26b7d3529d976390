"""The errors a user can cause, and only those.

Every error that bad input, a missing file or a refused destination can raise derives from
:class:`LayerScopeError`; each subsystem's own error (``PruneError``, ``ModelLoadError``, ``RecipeError`` …)
derives from it. The command line prints a :class:`LayerScopeError` as one line and exits with status 2; anything
else is a bug and shows its full traceback (exit 1). The dashboard shows the one line, and for a bug the message
with the traceback in an expander.

The subclasses below also derive from the built-in exception they refine (``ValueError``, ``KeyError``,
``FileNotFoundError``, ``FileExistsError``), so code that catches the built-in keeps working.
"""

from __future__ import annotations


class LayerScopeError(Exception):
    """An error the user can cause and fix: its message is one line that says what to do."""


class InputError(LayerScopeError, ValueError):
    """A value the user gave (an option, a recipe field, a widget) that cannot work."""


class NotFound(LayerScopeError, KeyError):
    """A name the user gave (a metric, a task, a text) that is not known."""

    def __str__(self) -> str:  # KeyError's str() quotes its argument
        return str(self.args[0]) if self.args else ""


class MissingFile(LayerScopeError, FileNotFoundError):
    """A file or folder the user named that does not exist or cannot be read."""


class DestinationRefused(LayerScopeError, FileExistsError):
    """A destination LayerScope will not write to (it holds files LayerScope did not write, or needs confirming)."""


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` as the one line the command line and the pages show."""
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split("\n")) if len(text) < 400 else text.splitlines()[0]
