"""The local sandbox image recipe: the fast, offline parts (the slow build itself runs once
per session through the ``box_image`` fixture)."""

from __future__ import annotations

import io
import os
import tarfile
import threading
import time
from pathlib import Path

import docker
import pytest

from spoke.boxes import image
from spoke.boxes.image import (
    DEFAULT_IMAGE,
    SandboxImageError,
    customize_rootfs,
    ensure_sandbox_image,
    image_present,
)


def test_present_image_is_not_rebuilt(
    box_image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_build(*_args: object) -> None:
        raise AssertionError("must not build when the image is present")

    monkeypatch.setattr(image, "_build_rootfs_tarball", no_build)
    started = time.monotonic()
    ensure_sandbox_image(box_image, cache_dir=tmp_path)
    assert time.monotonic() - started < 5
    assert image_present(box_image)
    assert not image_present("spokehub-no-such-image:never")


def test_sandbox_image_metadata(box_image: str, docker_client: docker.DockerClient) -> None:
    config = docker_client.api.inspect_image(box_image)["Config"]
    assert config["User"] == "1000:1000"
    assert config["WorkingDir"] == "/workspace"
    assert config["Cmd"] == ["/bin/sh"]


def test_cached_tarball_is_imported_without_debootstrap(
    docker_client: docker.DockerClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tarball = tmp_path / f"rootfs-{image.SUITE}-{image.RECIPE_VERSION}.tar"
    with tarfile.open(tarball, "w") as tar:  # a stand-in root filesystem
        info = tarfile.TarInfo("etc/hostname")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"box\n"))
    monkeypatch.setattr(image, "_find_debootstrap", lambda: pytest.fail("debootstrap ran"))
    name = f"spokehub-sandbox-test:{os.getpid()}"
    lines: list[str] = []
    try:
        ensure_sandbox_image(name, progress=lines.append, cache_dir=tmp_path)
        assert image_present(name)
        assert any("cached" in line for line in lines), lines
        config = docker_client.api.inspect_image(name)["Config"]
        assert (config["User"], config["WorkingDir"]) == ("1000:1000", "/workspace")
    finally:
        docker_client.api.remove_image(name, force=True)


def test_customize_rootfs_adds_user_and_workspace(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:")  # no trailing newline
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    debs = tmp_path / "var/cache/apt/archives"
    debs.mkdir(parents=True)
    (debs / "x.deb").write_bytes(b"deb")
    customize_rootfs(tmp_path)
    customize_rootfs(tmp_path)  # idempotent
    passwd = (etc / "passwd").read_text().splitlines()
    assert passwd[-1].startswith("sandbox:x:1000:1000:") and len(passwd) == 2
    assert (etc / "group").read_text().splitlines() == ["root:x:0:", "sandbox:x:1000:"]
    assert (etc / "shadow").read_text().count("sandbox:") == 1
    st = (tmp_path / "workspace").stat()
    assert (st.st_uid, st.st_gid) == (1000, 1000)
    assert not (debs / "x.deb").exists()


def test_missing_debootstrap_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image.shutil, "which", lambda *_a, **_k: None)
    with pytest.raises(SandboxImageError, match="apt-get install -y debootstrap"):
        image._find_debootstrap()


def test_build_lock_serialises_builders(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    order: list[str] = []
    said: list[str] = []
    inside = threading.Event()

    def first() -> None:
        with image._build_lock(lock, said.append):
            inside.set()
            time.sleep(0.3)
            order.append("first")

    t = threading.Thread(target=first)
    t.start()
    inside.wait(5)
    with image._build_lock(lock, said.append):
        order.append("second")
    t.join()
    assert order == ["first", "second"]
    assert any("waiting" in line for line in said)


def test_image_name_split() -> None:
    assert image._split_name(DEFAULT_IMAGE) == ("spokehub-sandbox", "bookworm")
    assert image._split_name("registry:5000/x") == ("registry:5000/x", "latest")
    assert image._split_name("plain") == ("plain", "latest")
