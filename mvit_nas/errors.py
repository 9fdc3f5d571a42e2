"""The one exception type that means "the user asked for something invalid".

Every module raises :class:`InputError` for bad input; the CLI turns it into a
one-line message and exit status 2. Anything else is an internal error (exit 1).
"""


class InputError(ValueError):
    """Bad input: names the offending field (or flag) and what is allowed."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")
