"""`python -m sidelight ARGS`: replaces this process with the `sidelight` binary, so signals
(SIGHUP reload, SIGTERM stop), the exit code and stdio are the binary's own."""

import os
import sys

from sidelight._find import find_sidelight_bin


def main():
    try:
        binary = find_sidelight_bin()
    except FileNotFoundError as e:
        sys.stderr.write(f"{e}\n")
        return 1
    os.execv(binary, [binary, *sys.argv[1:]])
    return 1  # not reached: execv returns only by raising


if __name__ == "__main__":
    sys.exit(main())
