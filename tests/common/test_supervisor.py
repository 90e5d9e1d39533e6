import asyncio
import os
import signal
import sys
from pathlib import Path

from brixmesh.common.ports import free_port
from brixmesh.common.supervisor import ProcessSpec, ProcessState, ReadinessProbe, SupervisedProcess, Supervisor

HTTP_SERVER = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _wait_for(predicate, timeout_s: float = 20.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return False


async def test_ready_after_probe_then_restarted_with_new_pid_after_kill(tmp_path: Path) -> None:
    port = free_port()
    states: list[ProcessState] = []
    process = SupervisedProcess(
        ProcessSpec("web", [*HTTP_SERVER, str(port)], log_path=tmp_path / "web.log",
                    readiness=ReadinessProbe(f"http://127.0.0.1:{port}/"), backoff_initial_s=0.1),
        on_state=lambda _p, state: states.append(state),
    )
    process.start()
    try:
        assert await process.wait_ready(20)
        first_pid = process.pid
        assert first_pid is not None
        os.kill(first_pid, signal.SIGKILL)
        assert await _wait_for(lambda: process.pid != first_pid and process.state is ProcessState.READY)
        assert process.restarts == 1
        assert states[:2] == [ProcessState.STARTING, ProcessState.READY]
        assert ProcessState.BACKOFF in states
    finally:
        await process.stop()
    assert process.state is ProcessState.STOPPED
    assert not _alive(process.pid)


async def test_crash_loop_is_reported(tmp_path: Path) -> None:
    states: list[ProcessState] = []
    process = SupervisedProcess(
        ProcessSpec("crasher", [sys.executable, "-c", "raise SystemExit(3)"], backoff_initial_s=0.01,
                    backoff_max_s=0.02, crashloop_restarts=3, crashloop_window_s=30),
        on_state=lambda _p, state: states.append(state),
    )
    process.start()
    try:
        assert await _wait_for(lambda: ProcessState.CRASHLOOP in states)
        assert process.last_exit_code == 3
    finally:
        await process.stop()


async def test_stop_kills_the_whole_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys, time; "
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
        f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(600)"
    )
    process = SupervisedProcess(ProcessSpec("parent", [sys.executable, "-c", script], stop_grace_s=2))
    process.start()
    assert await _wait_for(lambda: pid_file.exists() and pid_file.read_text() != "")
    grandchild = int(pid_file.read_text())
    await process.stop()
    assert await _wait_for(lambda: not _alive(grandchild), 5)


async def test_never_restart_policy_and_supervisor_group(tmp_path: Path) -> None:
    supervisor = Supervisor()
    once = supervisor.add(ProcessSpec("once", [sys.executable, "-c", "pass"], restart="never"))
    port = free_port()
    web = supervisor.add(ProcessSpec("web", [*HTTP_SERVER, str(port)], readiness=ReadinessProbe(f"127.0.0.1:{port}", tcp=True)))
    supervisor.start_all()
    try:
        assert await supervisor.wait_all_ready(20) == []
        assert await _wait_for(lambda: once.state is ProcessState.EXITED)
        assert once.restarts == 0
    finally:
        await supervisor.stop_all()
    assert web.state is ProcessState.STOPPED


async def test_a_released_process_keeps_running_and_is_adopted_then_restarted_as_a_child(
    tmp_path: Path,
) -> None:
    port = free_port()
    spec = ProcessSpec("web", [*HTTP_SERVER, str(port)], log_path=tmp_path / "web.log",
                       readiness=ReadinessProbe(f"http://127.0.0.1:{port}/"), backoff_initial_s=0.1)
    first = SupervisedProcess(spec)
    first.start()
    assert await first.wait_ready(20)
    pid = first.pid
    assert pid is not None and not first.adopted
    await first.release()
    assert _alive(pid)

    states: list[ProcessState] = []
    second = SupervisedProcess(spec, on_state=lambda _p, state: states.append(state))
    second.adopt(pid)
    try:
        assert await second.wait_ready(20)
        assert (second.pid, second.adopted) == (pid, True)
        assert states == [ProcessState.STARTING, ProcessState.READY]
        os.kill(pid, signal.SIGKILL)
        assert await _wait_for(lambda: second.pid != pid and second.state is ProcessState.READY)
        # not our child: its exit status went to its real parent
        assert (second.adopted, second.restarts, second.last_exit_code) == (False, 1, None)
    finally:
        await second.stop()
    assert not _alive(second.pid)


async def test_adopting_a_process_that_is_already_gone_starts_a_child(tmp_path: Path) -> None:
    gone = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await gone.wait()
    process = SupervisedProcess(ProcessSpec("web", [sys.executable, "-c", "import time; time.sleep(60)"],
                                            backoff_initial_s=0.01))
    process.adopt(gone.pid)
    try:
        assert await _wait_for(lambda: process.pid != gone.pid and not process.adopted)
    finally:
        await process.stop()
