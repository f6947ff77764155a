# A tiny script for `POST /execute` (see README.md).
import platform
import sys

print("Hello from the sandbox!")
print(f"Python {platform.python_version()} on {platform.system()}")
print("squares:", [n * n for n in range(5)])
print("this line goes to stderr", file=sys.stderr)
