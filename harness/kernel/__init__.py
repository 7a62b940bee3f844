"""Obtaining a bzImage for the guest: prebuilt, cached, built from Debian sources or from a
user's tree, or a user's bzImage as it is."""

from .config import FRAGMENT, REQUIRED_OPTIONS, missing_options, parse_config
from .image import KernelError, KernelImage
from .resolve import (
    DEFAULT_VERSION,
    PREBUILT_ENV,
    VERSIONS,
    build_kernel,
    build_user_tree,
    default_cache_dir,
    find_cached,
    find_prebuilt,
    resolve_kernel,
)

__all__ = [
    "DEFAULT_VERSION",
    "FRAGMENT",
    "PREBUILT_ENV",
    "REQUIRED_OPTIONS",
    "VERSIONS",
    "KernelError",
    "KernelImage",
    "build_kernel",
    "build_user_tree",
    "default_cache_dir",
    "find_cached",
    "find_prebuilt",
    "missing_options",
    "parse_config",
    "resolve_kernel",
]
