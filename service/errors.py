"""Domain errors, each with the HTTP status the API maps it to in one handler."""

from __future__ import annotations


class OptimlabError(Exception):
    """Base of the service's domain errors; ``code`` and ``status_code`` drive the HTTP response."""

    code = "error"
    status_code = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class JobNotFound(OptimlabError):
    code = "job_not_found"
    status_code = 404

    def __init__(self, job_id: int) -> None:
        super().__init__(f"No job with id {job_id}")


class SweepNotFound(OptimlabError):
    code = "sweep_not_found"
    status_code = 404

    def __init__(self, sweep_id: int) -> None:
        super().__init__(f"No sweep with id {sweep_id}")


class Unauthorized(OptimlabError):
    code = "unauthorized"
    status_code = 401


class IllegalTransition(OptimlabError):
    code = "illegal_transition"
    status_code = 409


class IdempotencyConflict(OptimlabError):
    code = "idempotency_conflict"
    status_code = 409


class InvalidRequest(OptimlabError):
    """A request that parses but asks for something that cannot be served (bad cursor, sort key)."""

    code = "invalid_request"
    status_code = 422


class ServiceUnavailable(OptimlabError):
    code = "unavailable"
    status_code = 503
