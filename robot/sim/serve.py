"""Run the simulated X-Trainer as the robot-PC side: sim + scripted human + bridge, connecting to a DobotEnv.

As its own process:   python -m robot.sim.serve --task easy --port 8080
In-process (laptops): handle = start_in_thread(SimServeConfig(task="easy", uri=f"ws://127.0.0.1:{env.port}"))
                      ... ; handle.stop()
The sim is created inside the thread that drives it (MuJoCo's EGL contexts are per thread).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import threading

os.environ.setdefault("MUJOCO_GL", "egl")

from robot.dobot.bridge import Bridge, BridgeConfig  # noqa: E402
from robot.sim.human import HumanConfig  # noqa: E402
from robot.sim.xtrainer import TASKS  # noqa: E402

log = logging.getLogger(__name__)


@dataclasses.dataclass
class SimServeConfig:
    task: str = "easy"
    uri: str = "ws://127.0.0.1:8080"
    api_key: str | None = None
    image_size: tuple[int, int] = (224, 298)
    seed: int = 0
    policy_steps: int = 20
    teleop_steps: int = 1
    human: HumanConfig = dataclasses.field(default_factory=HumanConfig)
    render: bool = True
    horizon_s: float | None = None  # episode time before the scripted human labels failure (None: the task's)


def make_bridge(config: SimServeConfig) -> Bridge:
    from robot.sim.robot_io import SimRobotIO  # imports mujoco: only where the sim runs

    io = SimRobotIO(
        config.task, config.image_size, config.human, seed=config.seed, render=config.render, horizon_s=config.horizon_s
    )
    bridge_config = BridgeConfig(
        uri=config.uri,
        api_key=config.api_key,
        policy_steps=config.policy_steps,
        teleop_steps=config.teleop_steps,
        reconnect_delay_s=0.2,
    )
    return Bridge(io, bridge_config)


class SimRobotThread:
    """A sim robot driven from its own thread; `stop()` ends it."""

    def __init__(self, config: SimServeConfig):
        self.config = config
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self.bridge: Bridge | None = None
        self._thread = threading.Thread(target=self._run, name="sim-robot", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=60):
            raise TimeoutError("the sim robot did not start within 60 s")
        if self.error is not None:
            raise RuntimeError(f"the sim robot failed to start: {self.error}") from self.error

    def _run(self) -> None:
        try:
            self.bridge = make_bridge(self.config)
            self.bridge.stop_event = self._stop
        except BaseException as err:
            self.error = err
            self._ready.set()
            return
        self._ready.set()
        try:
            self.bridge.run()
        except BaseException as err:
            self.error = err
            log.exception("sim robot stopped")
        finally:
            self.bridge.io.close()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


def start_in_thread(config: SimServeConfig) -> SimRobotThread:
    return SimRobotThread(config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="simulated X-Trainer robot PC (connects to a DobotEnv)")
    parser.add_argument("--task", choices=sorted(TASKS), default="easy")
    parser.add_argument("--host", default="127.0.0.1", help="where the DobotEnv listens")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--uri", default=None, help="full ws:// URI (overrides --host/--port)")
    parser.add_argument("--api-key", default=os.environ.get("HIORS_ROBOT_API_KEY"))
    parser.add_argument("--height", type=int, default=224)
    parser.add_argument("--width", type=int, default=298)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--policy-steps", type=int, default=20)
    parser.add_argument("--teleop-steps", type=int, default=1)
    parser.add_argument("--no-takeover", action="store_true", help="the scripted human only labels")
    parser.add_argument("--patience", type=float, default=None, help="seconds the policy gets before takeover")
    parser.add_argument("--horizon", type=float, default=None, help="episode seconds before a failure label")
    parser.add_argument("--max-queries", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s sim-robot %(levelname)s %(message)s")
    config = SimServeConfig(
        task=args.task,
        uri=args.uri or f"ws://{args.host}:{args.port}",
        api_key=args.api_key,
        image_size=(args.height, args.width),
        seed=args.seed,
        policy_steps=args.policy_steps,
        teleop_steps=args.teleop_steps,
        human=HumanConfig(takeover=not args.no_takeover, patience_s=args.patience),
        horizon_s=args.horizon,
    )
    bridge = make_bridge(config)
    try:
        bridge.run(max_queries=args.max_queries)
    except KeyboardInterrupt:
        pass
    finally:
        bridge.io.close()
    log.info("served %d queries over %d episodes", bridge.queries, bridge.io.episodes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
