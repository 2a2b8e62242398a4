"""The one compiled part: the ensemble's bfloat16 network kernel (models/ensemble/network_kernel.c).

Optional: where it does not build (no C compiler), the package installs without it and planning
runs the network through torch (models/ensemble/network_kernel.py says which runs).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "forethought.models.ensemble._network_kernel",
            ["models/ensemble/network_kernel.c"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
