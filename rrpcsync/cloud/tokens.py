"""Where the RRPC client gets its access token: the interface, and a token given by the user.

`cloud.login.AppLogin` is the other source: it logs in with the app's keys and renews.
"""

from __future__ import annotations

from typing import Protocol

from rrpcsync.errors import FatalApiError

LOGIN_CODE_PREFIX = "Login."  # ApiResult codes of a failed login: always fatal


class TokenError(FatalApiError):
    """No token can be had (the login failed, or the cloud refused a new token at once).
    `code` is the cloud's or the transport's code; the message names what to check and holds
    no secret."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    def result_code(self) -> str:
        """The code of the ApiResult a request gets when it cannot have a token."""
        return LOGIN_CODE_PREFIX + self.code


class TokenSource(Protocol):
    """What the RRPC client asks for a token and tells about the answers."""

    async def token(self) -> str:
        """A token to send now; waits while a login runs. Raises TokenError."""
        ...

    def accepted(self, token: str) -> None:
        """A request with `token` got an answer other than InvalidAccessToken."""
        ...

    async def refused(self, token: str) -> bool:
        """A request with `token` answered InvalidAccessToken. True: a new token is ready and
        the request may be sent again; False: this source cannot renew (the run is fatal).
        Raises TokenError when the new login fails or the new token was refused at once."""
        ...

    def secrets(self) -> tuple[str, ...]:
        """Values to redact from anything shown: tokens, password, AppSecret."""
        ...


class StaticToken:
    """A token the user gave: never renewed, so a refusal is fatal."""

    def __init__(self, token: str) -> None:
        self._token = token
        self.logins = 0

    def __repr__(self) -> str:
        return "StaticToken(***)"

    async def token(self) -> str:
        return self._token

    def accepted(self, token: str) -> None:
        pass

    async def refused(self, token: str) -> bool:
        return False

    def secrets(self) -> tuple[str, ...]:
        return (self._token,)
