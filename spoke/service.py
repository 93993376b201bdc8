"""Wiring a spoke process together: options → policy, box manager, dispatcher, connector."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from protocol.messages import LABEL_PATTERN
from protocol.tokens import JoinToken
from protocol.units import parse_size
from protocol.verbs import MIN_WORKSPACE_BYTES
from protocol.version import VERSION
from spoke import connector
from spoke.dispatcher import Dispatcher
from spoke.identity import SpokeState
from spoke.policy import Policy

OPTIONS_FILE = "options.json"
LABEL_RE = re.compile(LABEL_PATTERN.strip("^$"))
log = logging.getLogger("spokehub.spoke")


@dataclass
class SpokeOptions:
    """What an operator chose at ``spoke join``; kept so ``spoke run`` starts the same way."""

    data_dir: Path
    allow_images: list[str] = field(default_factory=list)
    max_boxes: int = 20
    max_memory_bytes: int = 4 * 1024**3
    max_cpus: float = 2.0
    allow_network: bool = True
    labels: list[str] = field(default_factory=list)
    runtime: str | None = None
    default_image: str | None = None
    max_workstreams: int = 4
    models_file: str | None = None
    allow_root: bool = False
    max_workspace_bytes: int = 10 * 1024**3
    max_transfers: int = 8
    drain_s: float = 10.0  # a clean stop waits this long at most for running calls
    warm: dict[str, int] = field(default_factory=dict)  # image -> ready boxes (--warm)

    @classmethod
    def from_cli(cls, data_dir: Path, opts: dict[str, Any]) -> SpokeOptions:
        """The options saved in ``data_dir`` by the last ``spoke join|run``, overridden by
        those given now (``opts``: click's parameters, see :data:`CLI_OPTIONS`), checked,
        and saved again. :class:`ValueError` (the CLI's usage error) names what is wrong.

        Pinned by ``tests/test_spoke_options.py``; end to end by ``tests/test_enrollment.py``,
        ``tests/test_admin_cli.py`` and ``tests/test_boxes_e2e.py``."""
        saved: dict[str, Any] = {}
        path = data_dir / OPTIONS_FILE
        if path.exists():
            saved = json.loads(path.read_text())
        from spoke.boxes.image import DEFAULT_IMAGE

        options = cls(data_dir=data_dir, **{k: v for k, v in saved.items() if k != "data_dir"})
        for row in CLI_OPTIONS:
            value = opts.get(row.name)
            if row.given(value):
                setattr(options, row.field, row.convert(value))
        if not options.allow_images:
            options.allow_images = [DEFAULT_IMAGE]
        for row in CLI_OPTIONS:  # on the result, saved values included
            if row.check is not None:
                row.check(options)
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        doc = {k: v for k, v in asdict(options).items() if k != "data_dir"}
        path.write_text(json.dumps(doc, indent=2))
        return options

    def policy(self) -> Policy:
        return Policy(
            allowed_images=tuple(self.allow_images),
            max_boxes=self.max_boxes,
            max_memory_bytes=self.max_memory_bytes,
            max_cpus=self.max_cpus,
            allow_network=self.allow_network,
            labels=tuple(self.labels),
            allow_root=self.allow_root,
            max_workspace_bytes=self.max_workspace_bytes,
            max_transfers=self.max_transfers,
        )


def _given(value: Any) -> bool:
    """A flag, list or text option counts when non-empty (click gives None, () or False)."""
    return bool(value)


def _given_number(value: Any) -> bool:
    """A number counts whenever given: 0 is a value (``--max-workstreams 0``)."""
    return value is not None


def _as_is(value: Any) -> Any:
    return value


def _check_default_image(options: SpokeOptions) -> None:
    if options.default_image and options.default_image not in options.allow_images:
        raise ValueError(f"--default-image {options.default_image} is not among the allowed images")


def _check_max_workspace(options: SpokeOptions) -> None:
    if options.max_workspace_bytes < MIN_WORKSPACE_BYTES:
        raise ValueError(f"--max-workspace must be at least {MIN_WORKSPACE_BYTES >> 20}m")


def _check_labels(options: SpokeOptions) -> None:
    for label in options.labels:
        if not LABEL_RE.fullmatch(label):
            raise ValueError(f"bad label {label!r}")


def _warm_targets(values: Any) -> dict[str, int]:
    """``--warm IMAGE=N`` (repeatable) → ``{IMAGE: N}``; N=0 drops that image's pool."""
    from spoke.boxes.warm_pool import parse_warm

    targets: dict[str, int] = {}
    for text in values:
        image, n = parse_warm(text)
        if image in targets:
            raise ValueError(f"--warm names image {image} twice")
        targets[image] = n
    return {image: n for image, n in targets.items() if n}


def _check_warm(options: SpokeOptions) -> None:
    """Pool boxes must be of allowed images and fit under --max-boxes (they count there).
    Pinned by tests/boxes/test_warm_pool.py::test_warm_option_syntax."""
    for image in options.warm:
        if image not in options.allow_images:
            raise ValueError(f"--warm {image}: the image is not among the allowed images "
                             "(--allow-image)")
    total = sum(options.warm.values())
    if total > options.max_boxes:
        raise ValueError(f"--warm asks for {total} ready boxes, more than --max-boxes "
                         f"{options.max_boxes} (pool boxes count against it)")


@dataclass(frozen=True)
class CliOption:
    """One ``spoke join|run`` option: how it lands in :class:`SpokeOptions`.

    ``name`` is click's parameter name, ``field`` the attribute it sets, ``convert`` turns
    the given value into the field's, ``given`` says whether the option was given at all (if
    not, the saved or default value stays), and ``check`` validates the final options."""

    name: str
    field: str
    convert: Callable[[Any], Any]
    given: Callable[[Any], bool] = _given
    check: Callable[[SpokeOptions], None] | None = None


# One row per option. Checks run in this order (the default image before the labels), so
# with several problems the first one reported is always the same.
CLI_OPTIONS: tuple[CliOption, ...] = (
    CliOption("allow_image", "allow_images", list),
    CliOption("default_image", "default_image", _as_is, check=_check_default_image),
    CliOption("labels", "labels", list, check=_check_labels),
    CliOption("max_boxes", "max_boxes", int, _given_number),
    CliOption("warm", "warm", _warm_targets, check=_check_warm),
    CliOption("max_memory", "max_memory_bytes", parse_size),
    CliOption("max_cpus", "max_cpus", float, _given_number),
    CliOption("no_network", "allow_network", lambda _: False),
    CliOption("runtime", "runtime", _as_is),
    CliOption("max_workstreams", "max_workstreams", int, _given_number),
    CliOption("models_file", "models_file", lambda value: str(Path(value).resolve())),
    CliOption("allow_root", "allow_root", lambda _: True),
    CliOption("max_workspace", "max_workspace_bytes", parse_size, check=_check_max_workspace),
    CliOption("max_transfers", "max_transfers", int, _given_number),
    CliOption("drain_timeout", "drain_s", float, _given_number),
)


async def serve(state: SpokeState, token: JoinToken | None, options: SpokeOptions) -> int:
    """Run until signalled (exit 0) or until the hub refuses us for good (exit 3)."""
    from spoke.boxes.docker_boxes import DockerBoxManager
    from spoke.identity import Identity
    from spoke.workstreams import WorkstreamRunner, load_local_models

    boxes = DockerBoxManager(state.name, runtime=options.runtime,
                             workspace_dir=options.data_dir / "workspaces")
    why = await boxes.workspace_limit_unavailable()
    if why:  # issue 8 item 7: say so, loudly, rather than pretend workspaces are limited
        log.warning("workspace size limits are unavailable on this spoke: %s; boxes get an "
                    "unlimited /workspace volume (a box can fill the disk)", why)
    swept = await boxes.end_orphaned_execs()
    if swept:
        log.info("ended what earlier execs left running in %d box(es)", swept)
    policy = options.policy()
    if options.warm:  # issue 14: ready boxes per image (spoke/boxes/warm_pool.py)
        from spoke.boxes.warm_pool import WarmPool, pool_template

        boxes.warm = WarmPool(boxes, options.warm, max_boxes=policy.max_boxes,
                              template=pool_template(policy))
        await boxes.warm.start()
        print(f"spoke {state.name}: warm pools "
              + ", ".join(f"{image}={n}" for image, n in options.warm.items())
              + f" (ready now: {boxes.warm.status()}; filling in the background)", flush=True)
    local = load_local_models(Path(options.models_file) if options.models_file else None)
    runner = WorkstreamRunner(boxes, policy, default_image=options.default_image,
                              max_workstreams=options.max_workstreams, local_models=local)
    runtime = connector.SpokeRuntime(
        identity=Identity(options.data_dir),
        state=state,
        dispatcher=Dispatcher(state.name, VERSION, boxes, policy, chunk_bytes=64 * 1024, workstreams=runner),
        version=VERSION,
        labels=tuple(options.labels),
        token=token,
        workstreams=runner,
        models=tuple(local),
        on_connected=lambda url: print(f"spoke {state.name} connected to {url}", flush=True),
        drain_s=options.drain_s,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await connector.run(runtime, stop)
        return 0
    except connector.Fatal as err:
        print(f"spoke {state.name}: {err}", file=sys.stderr, flush=True)
        return 3
    finally:
        await runner.shutdown()
        await boxes.close()
