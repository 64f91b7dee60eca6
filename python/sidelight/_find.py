"""Where pip put the `sidelight` binary of this wheel."""

import os
import sys
import sysconfig


def _candidates():
    """Scripts directories this package may have been installed with, most likely first: the
    environment of this interpreter, a `pip install --user`, a `pip install --target DIR`
    (the binary then sits in DIR/bin beside the package), and PATH last."""
    exe = "sidelight" + (sysconfig.get_config_var("EXE") or "")
    yield os.path.join(sysconfig.get_path("scripts"), exe)
    if sys.version_info >= (3, 10):
        user_scheme = sysconfig.get_preferred_scheme("user")
    else:
        user_scheme = "posix_user"
    try:
        yield os.path.join(sysconfig.get_path("scripts", scheme=user_scheme), exe)
    except KeyError:
        pass
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    yield os.path.join(package_root, "bin", exe)
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if directory:
            yield os.path.join(directory, exe)


def find_sidelight_bin():
    """The path of the installed `sidelight` binary; FileNotFoundError naming the places looked
    in when there is none."""
    looked = []
    for path in _candidates():
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
        looked.append(path)
    raise FileNotFoundError("sidelight binary not found; looked in: " + ", ".join(looked))
