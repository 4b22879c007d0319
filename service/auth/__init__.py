"""Users and keys: API keys stored hashed, the principal each request acts as, and the owner
scoping every job and sweep query goes through (``principal.visible_to``)."""
