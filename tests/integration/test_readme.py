"""The README's code blocks run as written, in order, against a real `optimlab up`.

Every ```bash and ```python block runs (bash with the venv's `optimlab` and `python` first on
PATH, as `bash .ci/install.sh` leaves them), each ```yaml block parses and, when it is a whole
spec or sweep file, is submitted with the CLI and waited for. The only change made to a block is
the port: the README's `:8000` becomes this test's free port. A block that cannot run here (it
starts the service, is the test suite itself, needs Docker or a GPU) is preceded by the comment
`<!-- readme-test: skip: why -->`, and the test checks that every skip gives its reason. Untagged
blocks are sample output and are not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import ROOT, Api, Proc, optimlab, service_env, wait_for
from tests.servers import free_port

pytestmark = pytest.mark.slow

FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
SKIP = re.compile(r"<!-- readme-test: skip(?::\s*(?P<why>[^>]*?))?\s*-->\s*$")
RUN = ("bash", "python", "yaml")


@dataclass
class Block:
    line: int
    language: str
    code: str
    skip: str | None  # the reason, when the README says not to run it

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.language})"


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks of the README, each with the skip reason written just above it."""
    blocks = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.search(before)
        line = text.count("\n", 0, match.start()) + 1
        blocks.append(Block(line, match.group(1), match.group(2), skip and (skip.group("why") or "").strip()))
    return blocks


def test_blocks_are_found_and_every_skip_says_why() -> None:
    blocks = readme_blocks((ROOT / "README.md").read_text())
    runnable = [b for b in blocks if b.language in RUN and b.skip is None]
    assert len([b for b in runnable if b.language == "python"]) >= 4
    assert len([b for b in runnable if b.language == "bash"]) >= 1
    for block in blocks:
        if block.skip is not None:
            assert len(block.skip) >= 10, f"{block}: a skipped block needs its reason"
    sample = "text\n<!-- readme-test: skip: starts the service -->\n```bash\noptimlab up\n```\n```python\nx = 1\n```\n"
    parsed = readme_blocks(sample)
    assert [(b.language, b.skip) for b in parsed] == [("bash", "starts the service"), ("python", None)]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str], Path]]:
    """`optimlab up` with two workers, as the README starts it; (url, env for the blocks, workdir)."""
    work = tmp_path_factory.mktemp("readme")
    port = free_port()
    env = service_env(OPTIMLAB_HOME=str(work / "home"))
    proc = Proc(optimlab("up", "--port", str(port), "--workers", "2"), env, work / "up.log", cwd=work)
    api = Api(f"http://127.0.0.1:{port}")
    try:
        wait_for(api.up, 90, "optimlab up to answer /healthz")
        venv_bin = str(Path(sys.executable).parent)
        block_env = env | {
            "PATH": f"{venv_bin}{os.pathsep}{env.get('PATH', '')}",
            "OPTIMLAB_URL": str(api.http.base_url),
        }
        yield str(port), block_env, work
    finally:
        proc.stop()
        print(proc.output()[-3000:])


def _run(block: Block, port: str, env: dict[str, str], work: Path) -> subprocess.CompletedProcess[str]:
    code = block.code.replace(":8000", f":{port}")
    if block.language == "bash":
        args, cwd = ["bash", "-euo", "pipefail", "-c", code], ROOT
    elif block.language == "python":
        args, cwd = [sys.executable, "-c", code], work  # files a block writes land in a temporary folder
    else:
        args, cwd = _yaml_command(block, code, work), ROOT
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)


def _yaml_command(block: Block, code: str, work: Path) -> list[str]:
    """A whole sweep file is created and waited for, a whole spec submitted and waited for; a
    fragment (one key of a spec) only has to parse."""
    data = yaml.safe_load(code)
    assert isinstance(data, dict), f"{block}: not a mapping"
    path = work / f"block{block.line}.yaml"
    path.write_text(code)
    if "base" in data:
        return optimlab("sweep", str(path), "--wait")
    if {"model", "dataset"} <= data.keys():
        return optimlab("submit", str(path), "--wait")
    return [sys.executable, "-c", "pass"]


def test_every_readme_block_runs_as_written(service: tuple[str, dict[str, str], Path]) -> None:
    port, env, work = service
    blocks = [b for b in readme_blocks((ROOT / "README.md").read_text()) if b.language in RUN and b.skip is None]
    failures = []
    for block in blocks:
        started = time.monotonic()
        done = _run(block, port, env, work)
        print(f"{block}: exit {done.returncode} in {time.monotonic() - started:.1f} s\n{done.stdout[-400:]}")
        if done.returncode != 0:
            out, err = done.stdout[-2000:], done.stderr[-3000:]
            failures.append(f"{block} exited {done.returncode}\n{block.code}\n--- stdout\n{out}\n--- stderr\n{err}")
    assert not failures, "\n\n".join(failures)
