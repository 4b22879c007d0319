"""The Python client: submit jobs and sweeps, wait for them, read results as DataFrames.

    from service.client import Client

    with Client("http://127.0.0.1:8000") as client:
        sweep = client.sweep(base, grid={"optimizer.lr": [0.1, 0.01]}, seeds=[0, 1, 2])
        client.wait(sweep)
        print(client.leaderboard(sweep))

Built on httpx; imports no torch. Connection errors and 503s are retried with exponential
backoff, and every POST carries an Idempotency-Key, so a retry never creates a second job.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from service.client_display import TERMINAL, Progress, detail_lines, flatten, label, lazy_module, progress_of
from service.client_frames import budget_frame, divergence_frame, matrix_frame, pairs_frame
from service.client_search import study_of

plots = lazy_module("service.plots")  # numpy when a plot is drawn, matplotlib too (the ``plot`` extra)
if TYPE_CHECKING:
    import optuna
    import pandas as pd
    from matplotlib.figure import Figure

DEFAULT_URL = "http://127.0.0.1:8000"
Ref = int | Mapping[str, Any]  # an id, or the dict the server returned for it
Out = str | Path | None  # where a plot is saved as PNG (None: not saved)
LONG_POLL_S = 25.0
"""How long ``wait`` asks the server to hold each request: under the usual 30 s proxy timeouts."""


class OptimlabError(Exception):
    """An error answer from the server, with its status code, error code and detail."""

    def __init__(self, status_code: int, error: str, detail: Any) -> None:
        self.status_code, self.error, self.detail = status_code, error, detail
        super().__init__(f"{status_code} {error}: {'; '.join(detail_lines(detail))}")


class NotFound(OptimlabError):
    pass


class Conflict(OptimlabError):
    pass


class InvalidRequest(OptimlabError):
    pass


class Unauthorized(OptimlabError):
    pass


class Unavailable(OptimlabError):
    """The server, its database or its broker could not be reached (after retries)."""


_ERRORS: dict[int, type[OptimlabError]] = {
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    422: InvalidRequest,
    503: Unavailable,
}


class Client:
    """A connection to an optimlab server.

    Args:
        url: the server (default ``OPTIMLAB_URL``, else http://127.0.0.1:8000).
        api_key: bearer key (default ``OPTIMLAB_API_KEY``).
        timeout: seconds per request.
        retries: attempts after the first on connection errors and 503s.
        backoff: first retry delay in seconds; doubles each time.
        fail_fast: a refused connection before the server's first answer is ``Unavailable`` at once
            (a wrong port, no server started: the CLI); refusals after it (a restart) are retried.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        retries: int = 5,
        backoff: float = 0.25,
        fail_fast: bool = False,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get("OPTIMLAB_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.url = url or os.environ.get("OPTIMLAB_URL") or DEFAULT_URL
        self._http = httpx.Client(base_url=self.url, timeout=timeout, headers=headers, transport=transport)
        self._retries, self._backoff, self._fail_fast = retries, backoff, fail_fast

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- transport ---------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(self._retries + 1):
            last = attempt == self._retries
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if last or (self._fail_fast and isinstance(exc, httpx.ConnectError)):
                    raise Unavailable(0, "unreachable", f"{self.url}: {exc}") from exc
            else:
                self._fail_fast = False  # it answered: a later refusal is a restart, worth retrying
                if response.status_code < 400:
                    return response
                if response.status_code != 503 or last:
                    raise _error(response)
            time.sleep(self._backoff * 2**attempt)
        raise AssertionError("unreachable")

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    def _post(self, path: str, body: Any = None) -> Any:
        # One key for every retry of this call: the server returns the first result.
        return self._json("POST", path, json=body, headers={"Idempotency-Key": uuid.uuid4().hex})

    def get(self, path: str, **params: Any) -> Any:
        """A GET's JSON answer (retried, errors mapped) for routes without a method: ``get("/v1/sweeps")``."""
        return self._json("GET", path, params=params)

    # --- jobs --------------------------------------------------------------------------------

    def submit(
        self, spec: Mapping[str, Any], *, tags: Iterable[str] = (), name: str | None = None, cache: bool = True
    ) -> dict[str, Any]:
        """Queue one job; returns it (``id``, ``status``, ...). An identical earlier run of yours
        is reused (the job comes back ``succeeded`` with ``cached_from``) unless ``cache=False``."""
        body: dict[str, Any] = {"spec": dict(spec), "tags": list(tags), "name": name}
        if not cache:  # only when asked: a server without the result cache still takes the rest
            body["cache"] = False
        return dict(self._post("/v1/jobs", body))

    def job(self, job: int | Mapping[str, Any]) -> dict[str, Any]:
        return dict(self._json("GET", f"/v1/jobs/{_id(job)}"))

    def jobs(self, *, limit: int = 100, **filters: Any) -> list[dict[str, Any]]:
        """Jobs matching ``status``, ``sweep_id``, ``optimizer``, ``tag`` and ``sort``, up to ``limit``."""
        items: list[dict[str, Any]] = []
        params = {k: v for k, v in filters.items() if v is not None}
        cursor = None
        while len(items) < limit:
            page_params = params | {"limit": min(limit - len(items), 500)} | ({"cursor": cursor} if cursor else {})
            page = self._json("GET", "/v1/jobs", params=page_params)
            items += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        return items

    def cancel(self, job: int | Mapping[str, Any]) -> dict[str, Any]:
        return dict(self._json("POST", f"/v1/jobs/{_id(job)}/cancel"))

    def metrics(self, job: int | Mapping[str, Any]) -> pd.DataFrame:
        """One row per epoch: epoch and every metric (train_loss, val_loss, val_accuracy, lr, ...)."""
        import pandas as pd

        rows = self._json("GET", f"/v1/jobs/{_id(job)}/metrics")["rows"]
        from optim_engine.results import METRIC_NAMES

        return pd.DataFrame(rows, columns=["epoch", *METRIC_NAMES])

    def catalog(self) -> dict[str, Any]:
        return dict(self._json("GET", "/v1/catalog"))

    # --- sweeps ------------------------------------------------------------------------------

    def sweep(
        self,
        base: Mapping[str, Any],
        *,
        grid: Mapping[str, list[Any]] | list[Mapping[str, list[Any]]] | None = None,
        random: Mapping[str, Any] | None = None,
        seeds: Iterable[int] | None = None,
        name: str | None = None,
        tags: Iterable[str] = (),
        execution: str = "auto",
        lr_from: int | Mapping[str, Any] | None = None,
        cache: bool = True,
        strategy: str | None = None,
        space: Mapping[str, Any] | None = None,
        budget: int | None = None,
        parallelism: int | None = None,
        objective: Mapping[str, Any] | None = None,
        sampler_seed: int | None = None,
        pruner: str | Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Create a sweep: ``grid`` maps dotted spec paths to values; ``random`` is
        ``{"n": 20, "seed": 0, "params": {"optimizer.lr": {"log_uniform": [1e-4, 1e-1]}}}``;
        every configuration runs once per seed. ``execution``: auto (pack the jobs that can
        train together), packed, or separate. ``lr_from`` grids ``optimizer.lr`` around an LR
        range test's suggestion: ``{"job_id": 12, "suggestion": "valley", "points": 5,
        "factor": 10.0}``, or just the job id for those defaults. Trials an identical earlier run
        of yours answers are served from the result cache (``cached_from``) unless ``cache=False``.

        An adaptive search: ``strategy`` (tpe, cmaes, gp, qmc or random), a ``space`` such as
        ``{"optimizer.lr": {"log_uniform": [1e-4, 1e-1]}}``, a ``budget`` of trials (each runs once
        per seed), ``parallelism`` trials at a time, and an ``objective`` (``{"metric": "val_loss",
        "which": "final", "direction": "minimize"}``, the default); ``pruner`` ("asha", "median",
        "hyperband", "wilcoxon", ... or ``{"name": ..., **optuna_params}``) stops losing trials early; see ``study``."""
        body: dict[str, Any] = {
            "name": name,
            "base": dict(base),
            "grid": grid,
            "random": random,
            "seeds": list(seeds) if seeds is not None else None,
            "tags": list(tags),
            "execution": execution,
        }
        if lr_from is not None:  # only when asked: a server without range tests still takes the rest
            body["lr_from"] = {"job_id": lr_from} if isinstance(lr_from, int) else dict(lr_from)
        if not cache:
            body["cache"] = False
        search = dict(strategy=strategy, space=space, budget=budget, parallelism=parallelism, objective=objective)
        body |= {k: v for k, v in (search | {"sampler_seed": sampler_seed, "pruner": pruner}).items() if v is not None}
        return dict(self._post("/v1/sweeps", body))

    def get_sweep(self, sweep: int | Mapping[str, Any]) -> dict[str, Any]:
        return dict(self._json("GET", f"/v1/sweeps/{_id(sweep)}"))

    def trials(self, sweep: Ref) -> dict[str, Any]:
        """An adaptive sweep's trials (params, state, value, intermediate, job_ids), space, objective."""
        return dict(self._json("GET", f"/v1/sweeps/{_id(sweep)}/trials"))

    def study(self, sweep: Ref) -> optuna.Study:
        """An adaptive sweep's trials as a detached ``optuna.Study``, for ``best_params``,
        ``trials_dataframe()``, ``optuna.importance`` (``optuna.visualization`` needs plotly)."""
        return study_of(self.trials(sweep))

    def cancel_sweep(self, sweep: int | Mapping[str, Any]) -> dict[str, Any]:
        return dict(self._json("POST", f"/v1/sweeps/{_id(sweep)}/cancel"))

    def leaderboard(
        self, sweep: int | Mapping[str, Any], *, metric: str = "val_loss", mode: str | None = None, which: str = "best"
    ) -> pd.DataFrame:
        """One row per configuration, best first: ``configuration`` (a label), the searched
        values as columns, n, mean, std, ci95_low, ci95_high, min, max, diverged, ..."""
        import pandas as pd

        params = {"metric": metric, "which": which} | ({"mode": mode} if mode else {})
        rows = self._json("GET", f"/v1/sweeps/{_id(sweep)}/leaderboard", params=params)["rows"]
        records = []
        for row in rows:
            flat = flatten(row.pop("config"))
            records.append({"rank": row.pop("rank"), "configuration": label(flat), **flat, **row})
        return pd.DataFrame(records)

    def sweep_metrics(
        self, sweep: int | Mapping[str, Any], *, columns: Iterable[str] = ("train_loss", "val_loss")
    ) -> pd.DataFrame:
        """Every job's per-epoch rows: job_id, epoch, the columns, plus configuration, seed, status."""
        import pandas as pd

        body = self._json("GET", f"/v1/sweeps/{_id(sweep)}/metrics", params={"columns": ",".join(columns)})
        frame = pd.DataFrame(body["rows"], columns=body["columns"])
        jobs = pd.DataFrame(
            [
                {
                    "job_id": j["job_id"],
                    "configuration": label(flatten(j["config"] or {})),
                    "seed": j["seed"],
                    "status": j["status"],
                }
                for j in body["jobs"]
            ],
            columns=["job_id", "configuration", "seed", "status"],
        )
        frame = frame.merge(jobs, on="job_id", how="left")
        frame.attrs["configs"] = {label(flatten(j["config"] or {})): flatten(j["config"] or {}) for j in body["jobs"]}
        return frame

    # --- analysis (issue 13) ------------------------------------------------------------------

    def _analysis(self, path: str, **params: Any) -> dict[str, Any]:
        return dict(self._json("GET", path, params={k: v for k, v in params.items() if v is not None}))

    def compare(
        self,
        sweep: Ref,
        a: str | None = None,
        b: str | None = None,
        *,
        b_sweep: Ref | None = None,
        metric: str = "val_loss",
        which: str = "best",
        mode: str | None = None,
    ) -> pd.DataFrame:
        """Configuration ``a`` against ``b`` seed by seed (config hashes or unique prefixes; either
        may be left out when its sweep has one configuration; ``b`` may live in ``b_sweep``).
        One row per paired seed (seed, a, b, diff = a - b); the answer (mean_diff, t_ci, bca_ci,
        wilcoxon_p, p_a_better, unpaired and excluded runs, verdict, ...) is in ``attrs``."""
        other = None if b_sweep is None else _id(b_sweep)
        query = {"a": a, "b": b, "b_sweep": other, "metric": metric, "which": which, "mode": mode}
        return pairs_frame(self._analysis(f"/v1/sweeps/{_id(sweep)}/compare", **query))

    def compare_matrix(
        self, sweep: Ref, *, metric: str = "val_loss", which: str = "best", mode: str | None = None
    ) -> pd.DataFrame:
        """Every ordered pair of the sweep's configurations: rows A, columns B (labels), values the
        mean difference A - B; ``attrs`` holds ``configs`` and every ``cells`` entry (CIs, p, verdict)."""
        body = self._analysis(f"/v1/sweeps/{_id(sweep)}/compare", metric=metric, which=which, mode=mode)
        return matrix_frame(body)

    def divergence(self, sweep: Ref, *, metric: str = "val_loss", which: str = "final") -> pd.DataFrame:
        """One row per optimizer configuration (group) and lr: runs, diverged, fraction, the
        metric's mean and std over stable runs, and the group's stable_max_lr / diverged_min_lr."""
        body = self._analysis(f"/v1/sweeps/{_id(sweep)}/divergence", metric=metric, which=which)
        return divergence_frame(body)

    def budget(
        self,
        sweep: Ref,
        *,
        metric: str = "val_loss",
        which: str = "best",
        mode: str | None = None,
        group_by: str = "optimizer",
    ) -> pd.DataFrame:
        """Expected best after k random-search trials per optimizer (``group_by="config"``: per
        optimizer configuration without its lr): group, n_trials, k, expected, lo, hi."""
        query = {"metric": metric, "which": which, "mode": mode, "group_by": group_by}
        body = self._analysis(f"/v1/sweeps/{_id(sweep)}/budget", **query)
        return budget_frame(body)

    def profiles(
        self, sweeps: Iterable[Ref], *, metric: str = "val_loss", tolerance: float | None = None
    ) -> dict[str, Any]:
        """Time to target per problem (each sweep is one) and performance profiles rho(tau) in
        epochs and seconds; ``tolerance`` relaxes each target (None: the server's default)."""
        ids = ",".join(str(_id(s)) for s in sweeps)
        return self._analysis("/v1/profiles", sweeps=ids, metric=metric, tolerance=tolerance)

    def trajectories(self, sweep: Ref) -> dict[str, Any]:
        """A 2-D test function sweep: the function's contour and every run's path."""
        return self._analysis(f"/v1/sweeps/{_id(sweep)}/trajectories")

    def result(self, job: Ref) -> dict[str, Any] | None:
        """What a job stored beyond its epochs (a range test's curve, a trajectory), or None."""
        return self._analysis(f"/v1/jobs/{_id(job)}/result")["result"]

    def range_test(
        self, spec: Mapping[str, Any], *, wait: bool = True, progress: bool = True, poll: float = 1.0, **settings: Any
    ) -> dict[str, Any]:
        """Run an LR range test on ``spec`` (``settings``: start_lr, end_lr, steps, smoothing,
        stop_factor override the spec's ``lr_range_test``). With ``wait``, returns the result
        (lr, loss, smoothed, suggestions, stopped) plus ``job_id``, for ``sweep(lr_from=...)``;
        without, the queued job."""
        job = self.submit(dict(spec) | {"lr_range_test": dict(spec.get("lr_range_test") or {}) | settings})
        if not wait:
            return job
        done = self.wait(job, progress=progress, poll=poll)
        if (found := self.result(done)) is None:
            raise RuntimeError(f"range test job {done['id']} {done['status']}: {done.get('error') or 'no result'}")
        return {"job_id": done["id"], **found}

    # --- waiting -----------------------------------------------------------------------------

    def wait(
        self,
        target: int | Mapping[str, Any],
        *,
        progress: bool = True,
        poll: float = 1.0,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Block until a job (an id or a job dict) or a sweep (a sweep dict) is finished; with
        ``progress``, a bar shows jobs done / total (epochs for one job) and the current best.

        Each request is a long-poll: the server answers when the state changes (or after
        ``LONG_POLL_S``), so completion shows within its check interval (~50 ms) and the bar moves
        on every change. A server without long-polling (no ``state_token`` in its answers) is
        asked again every ``poll`` seconds."""
        is_sweep = isinstance(target, Mapping) and "n_jobs" in target
        path = f"/v1/{'sweeps' if is_sweep else 'jobs'}/{_id(target)}"
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = Progress(progress)
        try:
            state = dict(self._json("GET", path))
            while True:
                bar.update(*progress_of(state, is_sweep))
                if state.get("done") if is_sweep else state["status"] in TERMINAL:
                    return state
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"{'sweep' if is_sweep else 'job'} {_id(target)} not finished after {timeout} s")
                # Without a bar only the end matters: one request held until then, not one per change.
                until = "change" if progress else "done"
                state = self._next_state(path, state, poll=poll, remaining=remaining, until=until)
        finally:
            bar.close()

    def _next_state(
        self, path: str, state: Mapping[str, Any], *, poll: float, remaining: float | None, until: str = "change"
    ) -> dict[str, Any]:
        """The state after ``state``: long-polled with its token (``until="done"``: held until the
        end; a server that does not know ``until`` still answers on the next change), or after
        ``poll`` seconds from a server whose answers carry none (it would answer at once)."""
        token = state.get("state_token")
        if token is None:
            time.sleep(poll if remaining is None else min(poll, remaining))
            return dict(self._json("GET", path))
        wait_s = LONG_POLL_S if remaining is None else round(min(LONG_POLL_S, remaining), 3)
        params = {"wait_s": wait_s, "since": token} | ({"until": until} if until != "change" else {})
        return dict(self._json("GET", path, params=params, timeout=self._timeout_beyond(wait_s)))

    def _timeout_beyond(self, wait_s: float) -> httpx.Timeout:
        """The client's timeouts, reading ``wait_s`` longer: a held answer is not a slow server."""
        base = self._http.timeout
        read = None if base.read is None else base.read + wait_s
        return httpx.Timeout(connect=base.connect, read=read, write=base.write, pool=base.pool)

    # --- plots (service.plots; needs matplotlib: ``pip install 'optimlab[plot]'``) -----------

    def plot_curves(
        self,
        sweep: int | Mapping[str, Any],
        path: str | Path = "curves.png",
        *,
        metric: str = "val_loss",
        title: str | None = None,
        log_scale: bool = True,
    ) -> Path:
        """Save a PNG of the metric per epoch per configuration (mean over seeds, band min..max),
        accuracy beside a loss when reported, titled with the sweep's name: service/plots_curves.py."""
        from service.plots_curves import plot_curves, wants

        name = self.get_sweep(sweep).get("name") or f"sweep {_id(sweep)}"
        frame = self.sweep_metrics(sweep, columns=wants(metric))
        plot_curves(frame, path, metric=metric, title=title or f"{name}: {metric}", log_scale=log_scale)
        return Path(path)

    def plot_compare(
        self, sweep: Ref, a: str | None = None, b: str | None = None, *, path: Out = None, **query: Any
    ) -> Figure:
        """A against B per seed, and the differences with their CIs; ``query`` as for ``compare``."""
        return plots.plot_compare(self.compare(sweep, a, b, **query), path)

    def plot_compare_matrix(self, sweep: Ref, *, path: Out = None, **query: Any) -> Figure:
        """Mean difference of every pair of configurations, marked where the verdict is not inconclusive."""
        return plots.plot_compare_matrix(self.compare_matrix(sweep, **query), path)

    def plot_range_test(self, job: Ref, *, path: Out = None) -> Figure:
        """A finished range test's loss against lr, with its suggestions."""
        return plots.plot_range_test(self.result(job), path)

    def plot_divergence(self, sweep: Ref, *, path: Out = None, **query: Any) -> Figure:
        """Fraction diverged and the metric against lr per optimizer configuration."""
        return plots.plot_divergence(self.divergence(sweep, **query), path)

    def plot_budget(self, sweep: Ref, *, path: Out = None, **query: Any) -> Figure:
        """Expected best after k random-search trials per optimizer, with its band."""
        return plots.plot_budget(self.budget(sweep, **query), path)

    def plot_profiles(self, sweeps: Iterable[Ref], *, path: Out = None, **query: Any) -> Figure:
        """Performance profiles rho(tau) across the sweeps, in epochs and in seconds."""
        return plots.plot_profiles(self.profiles(sweeps, **query), path)

    def plot_trajectories(self, sweep: Ref, *, path: Out = None) -> Figure:
        """Each 2-D test function run's path over the function's contour."""
        return plots.plot_trajectories(self.trajectories(sweep), path)


def _error(response: httpx.Response) -> OptimlabError:
    try:
        body = response.json()
        error, detail = body.get("error", "error"), body.get("detail", body)
    except (json.JSONDecodeError, AttributeError):
        error, detail = "error", response.text
    return _ERRORS.get(response.status_code, OptimlabError)(response.status_code, error, detail)


def _id(target: int | Mapping[str, Any]) -> int:
    return int(target["id"]) if isinstance(target, Mapping) else int(target)
