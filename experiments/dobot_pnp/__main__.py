"""Hi-ORS on the Dobot X-Trainer: one command for every role and variant.

    python -m experiments.dobot_pnp --config=configs/dobot_pnp.py:<variant> [--config.section.field=value ...]

variants: hiors (real robot, default), sft, sac, collect, sim (everything on this machine against the simulated
X-Trainer with the tiny model), sft_sim, sac_sim, collect_sim. Roles (--config.role): learner, actor, all (both
as processes on this machine). `--help` lists every field with its value in the chosen variant.
"""

from __future__ import annotations

import difflib
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time

CONFIG_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs",
                           "dobot_pnp.py")  # fmt: skip
STOP_GRACE_S = 120.0
RUN_KEY_ENV = "HIORS_TRANSPORT_AUTH_KEY"  # set by role=all for its two processes when transport.auth_key is empty


class UsageError(Exception):
    """A command-line problem; the message names the flag or field."""


# ------------------------------------------------------------------------------------------------ command line
def _config_spec(argv: list[str]) -> str:
    spec = f"{CONFIG_FILE}:hiors"
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            spec = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            spec = argv[i + 1]
    return spec


def _load_variant(spec: str):
    from configs import dobot_pnp

    path, _, variant = spec.partition(":")
    if os.path.abspath(path) != os.path.abspath(CONFIG_FILE) and not os.path.isfile(path):
        raise UsageError(f"--config={spec}: {path} is not a file")
    try:
        return dobot_pnp.get_config(variant or "hiors")
    except ValueError as err:
        raise UsageError(f"--config={spec}: {err}") from None


def _leaf_paths(cfg, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in cfg.items():
        path = f"{prefix}{key}"
        if hasattr(value, "items") and not isinstance(value, dict):
            out.update(_leaf_paths(value, f"{path}."))
        else:
            out[path] = value
    return out


def _check_override_names(argv: list[str], cfg) -> None:
    """A typo in an override fails here, naming it and the nearest real field (ml_collections raises deep inside
    flag parsing with a traceback)."""
    leaves = _leaf_paths(cfg)
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        name = arg[len("--config.") :].split("=", 1)[0]
        if name not in leaves:
            close = difflib.get_close_matches(name, list(leaves), n=1)
            hint = f" (did you mean --config.{close[0]}?)" if close else ""
            raise UsageError(f"--config.{name}: no such config field{hint}")


def parse(argv: list[str]):
    """argv (without the program) -> the locked ConfigDict with overrides applied."""
    from absl import flags
    from ml_collections import config_flags

    spec = _config_spec(argv)
    _check_override_names(argv, _load_variant(spec))
    fv = flags.FlagValues()
    full = [sys.argv[0], *argv]  # overrides are read from here (not sys.argv), so main(argv) works in-process
    config_flags.DEFINE_config_file(
        "config", f"{CONFIG_FILE}:hiors", "configs/dobot_pnp.py:<variant>", flag_values=fv, sys_argv=full
    )
    try:
        fv(full)
    except flags.Error as err:
        raise UsageError(str(err)) from None
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise UsageError(f"bad config override: {err}") from None
    return fv.config


def help_text(argv: list[str]) -> str:
    from configs.dobot_pnp import DOCS

    spec = _config_spec(argv)
    cfg = _load_variant(spec)
    lines = [__doc__.strip(), "", f"Fields of {spec} (override any with --config.<field>=<value>):", ""]
    leaves = _leaf_paths(cfg)
    width = max(len(p) for p in leaves)
    order = {path: i for i, path in enumerate(DOCS)}
    for path, value in sorted(
        leaves.items(), key=lambda kv: (order.get(kv[0].rsplit(".", 1)[0], order.get(kv[0], 1e9)), kv[0])
    ):
        doc = DOCS.get(path) or DOCS.get(path.rsplit(".", 1)[0], "")
        lines.append(f"  {path:<{width}}  {value!r:<24} {doc}")
    return "\n".join(lines)


def config_table() -> str:
    """The README's config table: every field, its value for the real robot (hiors; sac for SAC-only fields),
    the sim variant's where it differs, and its meaning (`python -m experiments.dobot_pnp --config_table`)."""
    from configs import dobot_pnp

    def cell(value) -> str:
        return "`None`" if value is None else f"`{value!r}`" if isinstance(value, str) else f"`{value}`"

    real, sac = _leaf_paths(dobot_pnp.get_config("hiors")), _leaf_paths(dobot_pnp.get_config("sac"))
    sim, sac_sim = _leaf_paths(dobot_pnp.get_config("sim")), _leaf_paths(dobot_pnp.get_config("sac_sim"))
    rows = ["| field | real robot (hiors) | sim | meaning |", "|---|---|---|---|"]
    for path, doc in dobot_pnp.DOCS.items():
        base, small = (real, sim) if path in real else (sac, sac_sim)
        value = base.get(path, "(section)")
        other = small.get(path, value)
        shown = cell(value) if path in base else "(section)"
        rows.append(f"| `{path}` | {shown} | {'' if other == value else cell(other)} | {doc.replace('|', '/')} |")
    return "\n".join(rows)


# ------------------------------------------------------------------------------------------------ processes
def _setup_logging(s) -> None:
    """Console: warnings and up (progress bars stay readable); the role's log file: config.log_level and up."""
    role = s.cfg.role if s.cfg.role != "all" else "main"
    log_dir = s.workdir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)
    console.setFormatter(logging.Formatter(f"[{role}] %(levelname)s %(name)s: %(message)s"))
    # Per-step clipping of an untrained policy's actions: counted in each step's info, kept in the log file.
    console.addFilter(lambda record: not record.getMessage().startswith("clipped "))
    file = logging.FileHandler(log_dir / f"{role}.log")
    file.setLevel(getattr(logging, s.cfg.log_level.upper(), logging.INFO))
    file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.handlers[:] = [console, file]
    for noisy in ("absl", "jax._src", "orbax", "websockets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(signum, frame):
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _child_argv(argv: list[str], role: str) -> list[str]:
    kept = [a for a in argv if not a.startswith(("--config.role=", "--config.max_seconds="))]
    return [sys.executable, "-m", "experiments.dobot_pnp", *kept, f"--config.role={role}", "--config.max_seconds=0"]


def _terminate(proc: subprocess.Popen, timeout: float) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def run_all(s, argv: list[str], stop: threading.Event) -> int:
    """Learner and actor as two processes (as on two machines); stops both in order at max_seconds or Ctrl-C:
    the actor finishes its episode and hands over what it has, then the learner saves its last checkpoint."""
    from experiments.dobot_pnp import build

    build.prepare_workdir(s)
    build.tokenizer_path(s)  # trained once here, so both processes read the same file
    for port in (s.transport.port_number, s.transport.broadcast_port):
        if _port_open(s.cfg.transport.host, port):
            raise UsageError(
                f"--config.transport: port {port} on {s.cfg.transport.host} is in use (another run's learner?); "
                "choose free --config.transport.port / --config.transport.broadcast_port"
            )
    # A key of this run's own: its actor cannot talk to another run's learner on the same ports, nor the reverse.
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if not s.cfg.transport.auth_key:
        env[RUN_KEY_ENV] = secrets.token_hex(16)
    learner = subprocess.Popen(_child_argv(argv, "learner"), env=env)
    _wait_for_port(s.cfg.transport.host, s.transport.port_number, learner, stop)
    actor = subprocess.Popen(_child_argv(argv, "actor"), env=dict(env, HIORS_PROGRESS_POSITION="1"))
    deadline = time.monotonic() + s.cfg.max_seconds if s.cfg.max_seconds else None
    why = ""
    while not why:
        time.sleep(0.5)
        if stop.is_set():
            why = "stopped"
        elif deadline is not None and time.monotonic() > deadline:
            why = f"max_seconds={s.cfg.max_seconds:g} reached"
        elif learner.poll() is not None:
            why = f"learner exited ({learner.returncode})"
        elif actor.poll() is not None:
            why = f"actor exited ({actor.returncode})"
    print(f"\n{why}: stopping the actor, then the learner", file=sys.stderr, flush=True)
    actor_rc = _terminate(actor, STOP_GRACE_S)
    learner_rc = _terminate(learner, STOP_GRACE_S)
    failed = [f"{name} exited with {rc} (see {s.workdir / 'logs' / name}.log)"
              for name, rc in (("actor", actor_rc), ("learner", learner_rc)) if rc != 0]  # fmt: skip
    if failed:
        print("error: " + "; ".join(failed), file=sys.stderr, flush=True)
        return 1
    print(summary(s), flush=True)
    return 0


def _wait_for_port(host: str, port: int, proc: subprocess.Popen, stop: threading.Event) -> None:
    """Start the actor once the learner listens (it would only log retries before), or if the learner died."""
    while proc.poll() is None and not stop.is_set():
        if _port_open(host, port):
            return
        time.sleep(0.5)


def _port_open(host: str, port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def summary(s) -> str:
    w = s.workdir
    lines = [
        "",
        f"run directory {w}",
        f"  tensorboard   tensorboard --logdir {w / 'tensorboard'}",
        f"  checkpoints   {w / 'checkpoints'} (resume: run the same command again)",
        f"  policy        {w / 'policy'} (openpi layout)",
        f"  datasets      {w / 'replay' / 'online'}, {w / 'replay' / 'accepted'} (LeRobot)",
    ]
    if s.cfg.actor.videos:
        lines.append(f"  videos        {w / 'videos'}")
    lines += [
        f"  logs          {w / 'logs'}",
        "next:",
        f"  python -m experiments.dobot_pnp.eval --config={_variant_spec(s)} --checkpoint_path={w / 'policy'}",
        f"  python -m experiments.dobot_pnp.serve --checkpoint_path={w / 'policy'} --port=8000",
        f"  python -m experiments.plot_run {w / 'tensorboard'}",
    ]
    return "\n".join(lines)


def _variant_spec(s) -> str:
    return f"configs/dobot_pnp.py:{s.cfg.variant}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--config_table"]:
        print(config_table())
        return 0
    if any(a in ("-h", "--help", "--helpfull", "--helpshort") for a in argv):
        try:
            print(help_text(argv))
        except UsageError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    from experiments.dobot_pnp.settings import ConfigError, Settings

    try:
        cfg = parse(argv)
        s = Settings.from_config(cfg)
    except (UsageError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    _setup_logging(s)
    stop = threading.Event()
    _stop_on_signals(stop)
    if s.cfg.max_seconds and s.cfg.role != "all":
        timer = threading.Timer(s.cfg.max_seconds, stop.set)
        timer.daemon = True
        timer.start()
    try:
        return _dispatch(s, argv, stop)
    except (ConfigError, UsageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _dispatch(s, argv: list[str], stop: threading.Event) -> int:
    from experiments.dobot_pnp import run_actor, run_learner

    base = s.cfg.variant.removesuffix("_sim")
    if base == "collect":
        return run_actor.collect(s, stop)
    if s.cfg.role == "learner" or (s.cfg.role == "all" and not s.needs_actors):
        rc = run_learner.run(s, stop)
        if s.cfg.role == "all":
            print(summary(s), flush=True)
        return rc
    if s.cfg.role == "actor":
        if not s.needs_actors:
            print(
                f"error: --config.role=actor: {s.algorithm} trains offline on demos; it has no actors", file=sys.stderr
            )
            return 2
        position = int(os.environ.get("HIORS_PROGRESS_POSITION", "0"))
        return run_actor.run(s, stop, progress_position=position)
    return run_all(s, argv, stop)


if __name__ == "__main__":
    sys.exit(main())
