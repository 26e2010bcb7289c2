"""Build the Cython extensions. Everything else is in pyproject.toml."""
import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

COMPILE_ARGS = ["-O3", "-fno-strict-aliasing"]

extensions = [
    Extension("engine._fastpath", ["engine/_fastpath.pyx"],
              include_dirs=[numpy.get_include()], extra_compile_args=COMPILE_ARGS,
              define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]),
    Extension("engine.export._encode", ["engine/export/_encode.pyx"],
              include_dirs=[numpy.get_include()], extra_compile_args=COMPILE_ARGS,
              define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]),
]

setup(ext_modules=cythonize(extensions, language_level=3,
                            compiler_directives={"boundscheck": False, "wraparound": False,
                                                 "cdivision": True}))
