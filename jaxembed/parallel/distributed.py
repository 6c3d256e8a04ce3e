"""Multi-host bring-up: `jax.distributed.initialize` from flags or the environment.

Two ways to use a TPU pod slice (or several GPU hosts), chosen by `mode`:

* `replica`: every host serves its own HTTP port with its own local devices
  (a load balancer spreads requests); nothing crosses hosts at run time.
* `global`: one model over every device of every host; process 0 serves HTTP
  and publishes each batch (jaxembed/parallel/pod.py), the others follow.

On Cloud TPU, `jax.distributed.initialize()` finds the coordinator, process
count and id by itself; elsewhere they come from flags or from
`JAXEMBED_COORDINATOR_ADDRESS`, `JAXEMBED_NUM_PROCESSES` and
`JAXEMBED_PROCESS_ID` (or LeaderWorkerSet's `LWS_WORKER_INDEX`, or an
indexed Job's `JOB_COMPLETION_INDEX`).
"""

from __future__ import annotations

import dataclasses
import logging
import os

import jax

log = logging.getLogger("jaxembed.distributed")

MODES = ("global", "replica")
# A leader's exit waits at most this long for a follower that is already gone.
SHUTDOWN_TIMEOUT_SECONDS = 10


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    coordinator_address: str | None = None  # host:port of process 0; None = auto-detect
    num_processes: int | None = None
    process_id: int | None = None
    mode: str = "global"
    heartbeat_timeout: float = 5.0  # seconds without heartbeats before a process is lost
    initialization_timeout: int = 300

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"multi-host mode must be one of {MODES}, not {self.mode!r}")

    @classmethod
    def from_env(cls, **overrides) -> DistributedConfig:
        """Flags (non-None `overrides`) win over the environment."""
        env = os.environ
        process_id = next(
            (
                env[name]
                for name in ("JAXEMBED_PROCESS_ID", "LWS_WORKER_INDEX", "JOB_COMPLETION_INDEX")
                if env.get(name)
            ),
            None,
        )
        values = {
            "coordinator_address": env.get("JAXEMBED_COORDINATOR_ADDRESS"),
            "num_processes": int(env["JAXEMBED_NUM_PROCESSES"])
            if env.get("JAXEMBED_NUM_PROCESSES")
            else None,
            "process_id": int(process_id) if process_id else None,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def initialize(config: DistributedConfig) -> None:
    """Join the process group (blocks until every process has joined, or times out)."""
    log.info(
        "joining the process group (coordinator %s, process %s of %s)",
        config.coordinator_address or "auto",
        "auto" if config.process_id is None else config.process_id,
        config.num_processes or "auto",
    )
    if config.mode == "global":
        _enable_recoverability()
    try:
        jax.distributed.initialize(
            coordinator_address=config.coordinator_address,
            num_processes=config.num_processes,
            process_id=config.process_id,
            initialization_timeout=config.initialization_timeout,
            heartbeat_timeout_seconds=max(1, round(config.heartbeat_timeout)),
            shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_SECONDS,
        )
    except (ValueError, RuntimeError) as e:
        raise RuntimeError(
            f"cannot join the process group ({e}); outside Cloud TPU pass --coordinator-address, "
            "--num-processes and --process-id (or JAXEMBED_COORDINATOR_ADDRESS, ...)"
        ) from None
    log.info(
        "process %d of %d: %d local devices, %d in total",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def _enable_recoverability() -> None:
    """In a global group a process that dies must not take the others down with it: the
    leader answers `/ready` 503 for a lost follower (jaxembed/parallel/pod.py). Without this
    JAX's coordination agent ends every process when one stops heartbeating. (Replicas keep
    JAX's default, whose shutdown barrier lets process 0 — the service — leave last.)"""
    try:
        jax.config.update("jax_enable_recoverability", True)
    except AttributeError:  # a JAX without the option: a follower's death ends the leader
        log.warning("this JAX cannot keep a group running past a lost process")


def serving_devices(config: DistributedConfig | None) -> list[jax.Device]:
    """The devices one server process drives: its own (replica) or every process's (global)."""
    if config is None or config.mode == "replica":
        return jax.local_devices()
    return jax.devices()
