"""Wiring a spoke process together: options → policy, box manager, dispatcher, connector."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from protocol.tokens import JoinToken
from spoke import connector
from spoke.dispatcher import Dispatcher
from spoke.identity import SpokeState
from spoke.policy import Policy

VERSION = "0.1.0"
OPTIONS_FILE = "options.json"
log = logging.getLogger("spokehub.spoke")


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)([kmg]?)b?", text.strip().lower())
    if not match or int(match.group(1)) <= 0:
        raise ValueError(f"bad size {text!r} (use e.g. 512m, 4g)")
    return int(match.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2)]


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

    @classmethod
    def from_cli(cls, data_dir: Path, opts: dict[str, Any]) -> SpokeOptions:
        saved: dict[str, Any] = {}
        path = data_dir / OPTIONS_FILE
        if path.exists():
            saved = json.loads(path.read_text())
        from spoke.boxes.image import DEFAULT_IMAGE

        options = cls(data_dir=data_dir, **{k: v for k, v in saved.items() if k != "data_dir"})
        if opts.get("allow_image"):
            options.allow_images = list(opts["allow_image"])
        if not options.allow_images:
            options.allow_images = [DEFAULT_IMAGE]
        if opts.get("max_boxes") is not None:
            options.max_boxes = int(opts["max_boxes"])
        if opts.get("max_memory"):
            options.max_memory_bytes = parse_size(opts["max_memory"])
        if opts.get("max_cpus") is not None:
            options.max_cpus = float(opts["max_cpus"])
        if opts.get("no_network"):
            options.allow_network = False
        if opts.get("labels"):
            options.labels = list(opts["labels"])
        if opts.get("runtime"):
            options.runtime = opts["runtime"]
        if opts.get("default_image"):
            options.default_image = opts["default_image"]
        if opts.get("max_workstreams") is not None:
            options.max_workstreams = int(opts["max_workstreams"])
        if opts.get("models_file"):
            options.models_file = str(Path(opts["models_file"]).resolve())
        if options.default_image and options.default_image not in options.allow_images:
            raise ValueError(f"--default-image {options.default_image} is not among the allowed images")
        for label in options.labels:
            if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,62}", label):
                raise ValueError(f"bad label {label!r}")
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
        )


async def serve(state: SpokeState, token: JoinToken | None, options: SpokeOptions) -> int:
    """Run until signalled (exit 0) or until the hub refuses us for good (exit 3)."""
    from spoke.boxes.docker_boxes import DockerBoxManager
    from spoke.identity import Identity
    from spoke.workstreams import WorkstreamRunner, load_local_models

    boxes = DockerBoxManager(state.name, runtime=options.runtime)
    policy = options.policy()
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
