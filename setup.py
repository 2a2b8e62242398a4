"""The compiled parts of the ensemble's CPU planning: the bfloat16 network kernel
(models/ensemble/network_kernel.c) and a sampling step's work around it (models/ensemble/sampling_kernel.c).

Optional: where they do not build (no C compiler), the package installs without them and planning
runs the network through torch and draws from torch's generator (network_kernel.py and
sampling_kernel.py say which runs).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "forethought.models.ensemble._network_kernel",
            ["models/ensemble/network_kernel.c"],
            extra_compile_args=["-O3"],
            optional=True,
        ),
        Extension(
            "forethought.models.ensemble._sampling_kernel",
            ["models/ensemble/sampling_kernel.c"],
            extra_compile_args=["-O3", "-ffp-contract=off"],  # the numba passes' roundings, bit for bit
            optional=True,
        ),
    ]
)
