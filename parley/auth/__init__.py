"""Authentication: passwords, tokens, identity providers."""

from parley.auth.passwords import PasswordHasher

__all__ = ["PasswordHasher"]
