"""The compiled part of the ensemble's CPU planning: one extension module (_planning_kernels) from
the bfloat16 network kernel (models/ensemble/network_kernel.c), a sampling step's work around it
(sampling_kernel.c) and whole rollouts through both (planning_kernels.c).

Optional: where it does not build (no C compiler), the package installs without it and planning
runs the network through torch and the step through numba with torch's draws (network_kernel.py and
sampling_kernel.py say which runs).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "forethought.models.ensemble._planning_kernels",
            ["models/ensemble/network_kernel.c", "models/ensemble/sampling_kernel.c",
             "models/ensemble/planning_kernels.c"],
            depends=["models/ensemble/planning_kernels.h"],
            # no product and sum fused where numba's passes do not fuse them: their roundings, bit for bit
            extra_compile_args=["-O3", "-ffp-contract=off"],
            optional=True,
        ),
    ]
)
