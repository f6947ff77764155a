"""Checks of the built image, run by scripts/build-rootfs.sh under runsc (this directory is
mounted read-only at /.sandbox for the check): the libraries that are installed import and
work in a sandbox. Modules that are not installed are skipped, so an operator may drop
packages from packages.txt without touching this file. Prints "ok" on success."""

import importlib
import importlib.util
import os
import subprocess
import sys
import sysconfig

# Checked when installed (import names).
MODULES = [
    "numpy", "pandas", "scipy", "matplotlib", "sympy", "requests", "PIL", "yaml", "bs4",
    "lxml", "dateutil", "pytz", "tabulate", "openpyxl",
]


def installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def main() -> None:
    for name in MODULES:
        if installed(name):
            importlib.import_module(name)

    if installed("numpy"):
        import numpy

        a = numpy.arange(16.0).reshape(4, 4) + numpy.eye(4)
        assert numpy.allclose(numpy.linalg.inv(a) @ a, numpy.eye(4)), "numpy.linalg"

    if installed("matplotlib"):
        # Agg must be the default even without the server's MPLBACKEND (from /etc/matplotlibrc).
        env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
        code = (
            "import matplotlib; assert matplotlib.get_backend().lower() == 'agg', "
            "matplotlib.get_backend()\n"
            "import matplotlib.pyplot as plt\n"
            "plt.plot([1, 2, 3], [1, 4, 9]); plt.savefig('/tmp/check.png')\n"
            "assert open('/tmp/check.png', 'rb').read(8) == b'\\x89PNG\\r\\n\\x1a\\n'\n"
        )
        subprocess.run([sys.executable, "-c", code], env=env, check=True)

    if installed("pip"):
        marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
        assert not os.path.exists(marker), f"{marker} is present: pip install would refuse"
        subprocess.run([sys.executable, "-m", "pip", "check"], check=True,
                       stdout=subprocess.DEVNULL)

    print("ok")


if __name__ == "__main__":
    main()
