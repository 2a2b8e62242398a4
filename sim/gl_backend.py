"""MuJoCo's OpenGL backend, chosen before MuJoCo loads when the user has not chosen one.

MuJoCo reads MUJOCO_GL once, when `mujoco` is first imported, and a window-system backend (GLFW)
fails without a display: on a server, in a container or over SSH. So, on Linux with no display
and MUJOCO_GL unset, `choose_gl_backend` tries EGL (a GPU, or Mesa's software device), then
OSMesa, each in a short-lived subprocess (a GL driver that crashes takes only the probe with it),
and sets MUJOCO_GL (and PyOpenGL's PYOPENGL_PLATFORM) to the first that creates a context. When
none does, it sets MUJOCO_GL=disable and `rendering_unavailable()` says why and how to fix it;
rendering callers then skip their video with one warning line.

The choice happens on the first import of `forethought.sim` (and first thing in the command line),
so it precedes every `import mujoco` of the stack; a program that imports mujoco earlier keeps
what it chose.
"""

from __future__ import annotations

import os
import subprocess
import sys

# Each probe creates a context the way MuJoCo's own backend does, with ctypes only (no mujoco,
# no PyOpenGL), and exits 0 when it could.
_EGL_PROBE = r"""
import ctypes, sys
egl = ctypes.CDLL("libEGL.so.1")
egl.eglGetProcAddress.restype = ctypes.c_void_p
egl.eglGetProcAddress.argtypes = [ctypes.c_char_p]
def ext(name, restype, *argtypes):
    address = egl.eglGetProcAddress(name)
    if not address:
        sys.exit(3)
    return ctypes.CFUNCTYPE(restype, *argtypes)(address)
query = ext(b"eglQueryDevicesEXT", ctypes.c_uint, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_int))
platform_display = ext(b"eglGetPlatformDisplayEXT", ctypes.c_void_p, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p)
devices, count = (ctypes.c_void_p * 16)(), ctypes.c_int()
if not query(16, devices, ctypes.byref(count)) or count.value < 1:
    sys.exit(4)
egl.eglInitialize.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
egl.eglChooseConfig.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
egl.eglCreateContext.restype = ctypes.c_void_p
egl.eglCreateContext.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
# RGBA 8 bits, depth 24, stencil 8, a pbuffer surface, desktop OpenGL (as MuJoCo asks).
attributes = (ctypes.c_int * 17)(0x3024, 8, 0x3023, 8, 0x3022, 8, 0x3021, 8, 0x3025, 24, 0x3026, 8,
                                 0x3033, 0x0001, 0x3040, 0x0008, 0x3038)
for device in devices[: count.value]:
    display = platform_display(0x313F, device, None)
    if not display or not egl.eglInitialize(display, None, None):
        continue
    config, configs = ctypes.c_void_p(), ctypes.c_int()
    if egl.eglChooseConfig(display, attributes, ctypes.byref(config), 1, ctypes.byref(configs)) and configs.value > 0:
        if egl.eglBindAPI(0x30A2) and egl.eglCreateContext(display, config, None, None):
            sys.exit(0)
sys.exit(5)
"""

_OSMESA_PROBE = r"""
import ctypes, ctypes.util, sys
name = ctypes.util.find_library("OSMesa") or "libOSMesa.so.8"
osmesa = ctypes.CDLL(name)
osmesa.OSMesaCreateContextExt.restype = ctypes.c_void_p
osmesa.OSMesaCreateContextExt.argtypes = [ctypes.c_uint, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
sys.exit(0 if osmesa.OSMesaCreateContextExt(0x1908, 24, 8, 0, None) else 5)
"""

_PROBES = (("egl", _EGL_PROBE), ("osmesa", _OSMESA_PROBE))

HOW_TO_ENABLE = ("install Mesa's software OpenGL (Debian/Ubuntu: apt-get install libosmesa6) or a GPU driver "
                 "with EGL, or set MUJOCO_GL to a backend that works here (egl, osmesa, glfw with a display)")

_unavailable: str | None = None


def _probe(backend: str, code: str, timeout_s: float = 20.0) -> bool:
    try:
        done = subprocess.run([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=timeout_s, env={**os.environ, "MUJOCO_GL": backend})
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def needs_choice(environ=os.environ) -> bool:
    """Whether the stack must choose: MUJOCO_GL unset, on Linux, with no display to open a window on."""
    if environ.get("MUJOCO_GL") or not sys.platform.startswith("linux"):
        return False
    return not (environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"))


def choose_gl_backend(environ=os.environ, probe=_probe) -> str | None:
    """Set MUJOCO_GL (and PYOPENGL_PLATFORM) in `environ` to the first headless backend that `probe`
    finds working, if the user has not chosen one and there is no display; returns the backend in
    use (None: MuJoCo's default, or none works). Must run before `mujoco` is imported to take
    effect, so it does nothing once mujoco is loaded into this process."""
    global _unavailable
    if (environ is os.environ and "mujoco" in sys.modules) or not needs_choice(environ):
        return environ.get("MUJOCO_GL") or None
    for backend, code in _PROBES:
        if probe(backend, code):
            environ["MUJOCO_GL"] = backend
            environ.setdefault("PYOPENGL_PLATFORM", backend)
            return backend
    environ["MUJOCO_GL"] = "disable"
    _unavailable = "no OpenGL backend works without a display here (EGL and OSMesa failed to create a context)"
    return None


def rendering_unavailable() -> str | None:
    """Why MuJoCo cannot render in this process (with what to do about it), or None when it may."""
    if _unavailable is not None:
        return f"{_unavailable}: {HOW_TO_ENABLE}"
    if os.environ.get("MUJOCO_GL", "").strip().lower() in ("disable", "disabled", "off", "false", "0"):
        return f"MUJOCO_GL={os.environ['MUJOCO_GL']} disables rendering: unset it, or {HOW_TO_ENABLE}"
    return None
