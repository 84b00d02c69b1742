"""Build pyddpm: setuptools hands the extension pyddpm._C to CMake (CMakeLists.txt) and ninja.

Metadata lives in pyproject.toml. Environment variables read at build time:

    PYDDPM_CUDA=1        build the CUDA kernels; fail if nvcc is missing
    PYDDPM_CUDA=0        CPU only
    (unset)              CUDA iff nvcc is found ($CUDACXX, PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)
    PYDDPM_CUDA_ARCHS    CMAKE_CUDA_ARCHITECTURES, e.g. "80;90" (default: see CMakeLists.txt)
    PYDDPM_BUILD_TYPE    CMake build type (default Release)
    CMAKE_ARGS           extra CMake arguments, space separated

Installed module reports what it got: ``pyddpm._C.build_info()``.
"""

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    """An extension whose sources CMake knows; setuptools only places the result."""

    def __init__(self, name):
        super().__init__(name, sources=[])


def _cuda_request():
    value = os.environ.get("PYDDPM_CUDA", "").strip().lower()
    if value in ("", "auto"):
        return "AUTO"
    if value in ("1", "on", "true", "yes"):
        return "ON"
    if value in ("0", "off", "false", "no"):
        return "OFF"
    sys.exit(f"PYDDPM_CUDA must be 0, 1 or unset, got {value!r}")


def _find_nvcc():
    candidates = [os.environ.get("CUDACXX"), shutil.which("nvcc")]
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            candidates.append(os.path.join(home, "bin", "nvcc"))
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def _tool(module, attribute, name):
    """The cmake/ninja executable from its PyPI package if installed (the isolated build), else PATH."""
    try:
        directory = getattr(__import__(module), attribute)
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    except ImportError:
        pass
    path = shutil.which(name)
    if path is None:
        sys.exit(f"building pyddpm needs {name}: pip install {module}")
    return path


class CMakeBuild(build_ext):
    """Configures and builds CMakeLists.txt into the directory setuptools expects the module in."""

    def build_extension(self, ext):
        import pybind11

        request = _cuda_request()
        nvcc = None if request == "OFF" else _find_nvcc()
        if request == "ON" and nvcc is None:
            sys.exit("PYDDPM_CUDA=1 but nvcc was not found: put it on PATH or set CUDACXX/CUDA_HOME")

        cmake = _tool("cmake", "CMAKE_BIN_DIR", "cmake")
        extdir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        args = [
            f"-DCMAKE_BUILD_TYPE={os.environ.get('PYDDPM_BUILD_TYPE', 'Release')}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={extdir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DPYDDPM_VERSION={self.distribution.get_version()}",
            f"-DPYDDPM_CUDA={request}",
        ]
        if nvcc:
            args.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
        if os.environ.get("PYDDPM_CUDA_ARCHS"):
            args.append(f"-DCMAKE_CUDA_ARCHITECTURES={os.environ['PYDDPM_CUDA_ARCHS']}")
        if not os.environ.get("CMAKE_GENERATOR"):
            args += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={_tool('ninja', 'BIN_DIR', 'ninja')}"]
        args += shlex.split(os.environ.get("CMAKE_ARGS", ""))

        cache = build_dir / "CMakeCache.txt"
        if cache.exists() and f"CMAKE_COMMAND:INTERNAL={cmake}\n" not in cache.read_text():
            shutil.rmtree(build_dir)  # configured by another cmake (e.g. a deleted isolated env)
            build_dir.mkdir(parents=True)
        subprocess.run([cmake, "-S", str(ROOT), "-B", str(build_dir), *args], check=True)
        jobs = ["-j", str(self.parallel)] if self.parallel else []
        subprocess.run([cmake, "--build", str(build_dir), "--target", "_C", *jobs], check=True)


setup(ext_modules=[CMakeExtension("pyddpm._C")], cmdclass={"build_ext": CMakeBuild})
