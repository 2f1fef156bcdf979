"""The agent's Docker runtime against the real Docker engine: a container per task
with the cloud's labels, a non-root user, its output with stdout and stderr apart, its
exit code; a start delivered twice runs one container; an image that cannot be found
is a clear refusal; SIGKILL ends it. The image is the locally built Redis image (every
test run has it); its shell stands in for a tenant's program."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator

import pytest

from minicloud_agent.runtimes import DockerRuntime, Observed, StartFailed, Task

pytestmark = pytest.mark.broker
IMAGE = os.environ.get("MINICLOUD_REDIS_IMAGE", "minicloud/redis:7.0-bookworm")


def _docker_ready() -> bool:
    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return False
    return subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode == 0


def _remove_network(name: str) -> None:
    subprocess.run(["docker", "network", "rm", name], capture_output=True)


@pytest.fixture
async def runtime() -> AsyncIterator[DockerRuntime]:
    if not _docker_ready():
        why = f"the Docker runtime's tests need Docker and the image {IMAGE} (make images)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why}, and CI=true", pytrace=False)
        pytest.skip(why)
    tag = uuid.uuid4().hex[:8]
    rt = DockerRuntime(f"test-{tag}", network=f"mc-test-{tag}", cpus=0.5, memory_mib=128)
    try:
        yield rt
    finally:
        for key in await rt.keys():
            await rt.remove(key)
        _remove_network(f"mc-test-{tag}")


def task(argv: list[str], image: str = IMAGE, rank: int = 0) -> Task:
    return Task("alloc-t1", "wl-t1", "acme", rank, image, argv, {"GREETING": "hello"}, [], None, None)


async def finished(rt: DockerRuntime, key: str, within_s: float = 30) -> Observed:
    for _ in range(int(within_s * 10)):
        seen = await rt.observe(key)
        if seen is not None and seen.exit is not None:
            return seen
        await asyncio.sleep(0.1)
    raise AssertionError(f"{key} did not end within {within_s} s")


async def test_a_task_runs_as_a_labelled_non_root_container_and_its_output_and_exit_come_back(
    runtime: DockerRuntime,
) -> None:
    t = task(["sh", "-c", 'echo "$GREETING as $(id -u)"; echo oops >&2; exit 3'])
    await runtime.start(t)
    await runtime.start(t)  # delivered twice: adopted, not run again
    assert await runtime.keys() == [t.key]
    seen = await finished(runtime, t.key)
    assert seen.exit is not None
    assert seen.exit.code == 3
    lines, cursor = await runtime.output(t.key, "", 100)
    assert sorted((ln.stream, ln.text) for ln in lines) == [("stderr", "oops"), ("stdout", "hello as 65534")]
    assert await runtime.output(t.key, cursor, 100) == ([], cursor)  # nothing twice
    inspect = runtime.client.containers.get(runtime._name(t.key)).attrs
    assert inspect["Config"]["Labels"]["io.minicloud.allocation"] == "alloc-t1"
    assert inspect["HostConfig"]["CapDrop"] == ["ALL"]
    assert "no-new-privileges" in inspect["HostConfig"]["SecurityOpt"]
    assert inspect["HostConfig"]["Memory"] == 128 * 1024 * 1024


async def test_an_image_that_cannot_be_found_is_refused_with_the_reason(runtime: DockerRuntime) -> None:
    with pytest.raises(StartFailed, match="not found"):
        await runtime.start(task(["true"], image=f"minicloud/no-such-image:{uuid.uuid4().hex[:6]}"))


async def test_sigkill_ends_a_task_that_ignores_sigterm(runtime: DockerRuntime) -> None:
    t = task(["sh", "-c", "trap 'echo term' TERM; while true; do sleep 0.1; done"], rank=1)
    await runtime.start(t)
    for _ in range(50):
        seen = await runtime.observe(t.key)
        if seen is not None and seen.running:
            break
        await asyncio.sleep(0.1)
    await runtime.signal(t.key, signal.SIGTERM)
    await asyncio.sleep(0.5)
    still = await runtime.observe(t.key)
    assert still is not None
    assert still.running  # it ignored SIGTERM
    await runtime.signal(t.key, signal.SIGKILL)
    seen = await finished(runtime, t.key)
    assert seen.exit is not None
    assert seen.exit.code == 137
