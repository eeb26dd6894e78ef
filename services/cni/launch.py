"""The plugin's entry point as the installed wrapper runs it (services.cni.install):

    python -I -S launch.py PATH [ARGS...]

PATH (':'-separated) holds the services package and the libraries the plugin imports; it
goes first on the module path, as neither site nor the environment put anything there.
"""
import os
import sys

sys.path[:0] = sys.argv[1].split(os.pathsep)
del sys.argv[1]

from services.cni.__main__ import main  # noqa: E402

code = main()
# The runtime waits for the process to end: skip the interpreter's teardown (freeing every
# module), as nothing is left to do once the result is out.
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
