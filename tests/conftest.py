"""Fixtures shared by the harness's own tests."""

from __future__ import annotations

import pytest

from colo_fixtures.config.settings import default_cache_dir
from colo_fixtures.sut.guest.image import GuestImage, build_guest


@pytest.fixture(scope="session")
def image() -> GuestImage:
    """The tiny guest (kernel + initramfs with colo-agent), built once and cached."""
    return build_guest(default_cache_dir())
