"""The compiled part of the package: the ROUGE-L index's kernel (the rest is in pyproject.toml).

Built from source by `pip install` with the platform's C++ compiler (C++17, no other dependency).
-ffp-contract=off keeps rouge-score's float formula bit for bit (no fused multiply-add). On
x86-64, -mpopcnt uses the POPCNT instruction (every x86-64 CPU since 2008 has it) instead of a
library call in the bit-parallel LCS and the overlap bound.
"""

import platform

from setuptools import Extension, setup

flags = ["-std=c++17", "-O3", "-ffp-contract=off", "-pthread"]
if platform.machine().lower() in ("x86_64", "amd64"):
    flags.append("-mpopcnt")

# A top-level module, not inside `actors`: a Ray job's working_dir carries the project's Python
# files (and leaves out what .gitignore names, such as this build's output), and its `actors`
# comes first on the job's path. Compiled code must come from the installed environment.
setup(ext_modules=[Extension(
    "_selfinstruct_rouge",
    sources=["actors/method/rouge_kernel.cpp"],
    language="c++",
    extra_compile_args=flags,
    extra_link_args=["-pthread"],
)])
