"""PEP 517 backend for the forkwarden wheel: maturin's, after cargo has built the
`forkwarden` binary, which the wheel carries as a script (pip installs it in the
environment's bin/, beside its python, where `forkwarden serve` looks for that python).

FORKWARDEN_BINARY names a binary built already (CI builds it once for the tests and the
wheel); without it, `cargo build --release` builds one, in cargo's own target directory.
"""

import json
import os
import shutil
import subprocess

import maturin
from maturin import (  # noqa: F401  (the hooks this backend does not change)
    build_sdist,
    get_requires_for_build_editable,
    get_requires_for_build_sdist,
    get_requires_for_build_wheel,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = os.path.join(ROOT, "target", "wheel-data", "scripts")


def _cargo(*args, capture=False):
    command = [os.environ.get("CARGO", "cargo"), *args,
               "--manifest-path", os.path.join(ROOT, "Cargo.toml")]
    result = subprocess.run(command, check=True, stdout=subprocess.PIPE if capture else None)
    return result.stdout


def _binary():
    """The forkwarden binary to ship, built now unless FORKWARDEN_BINARY names one."""
    given = os.environ.get("FORKWARDEN_BINARY")
    if given:
        return given
    _cargo("build", "--release", "--locked", "--package", "forkwarden", "--bin", "forkwarden")
    target = json.loads(_cargo("metadata", "--no-deps", "--format-version", "1",
                               capture=True))["target_directory"]
    return os.path.join(target, "release", "forkwarden")


def _stage_binary():
    if os.path.isdir(SCRIPTS):
        shutil.rmtree(SCRIPTS)
    os.makedirs(SCRIPTS)
    shutil.copy2(_binary(), os.path.join(SCRIPTS, "forkwarden"))


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _stage_binary()
    return maturin.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    _stage_binary()
    return maturin.build_editable(wheel_directory, config_settings, metadata_directory)


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    # maturin looks for the data directory already; the binary comes with the wheel.
    os.makedirs(SCRIPTS, exist_ok=True)
    return maturin.prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def prepare_metadata_for_build_editable(metadata_directory, config_settings=None):
    os.makedirs(SCRIPTS, exist_ok=True)
    return maturin.prepare_metadata_for_build_editable(metadata_directory, config_settings)
