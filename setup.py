"""The one compiled part of shardtools: loaders/_cropdecode.c. Everything else is in
pyproject.toml.

The extension decodes only a training crop's region of a JPEG and resizes it in C, which
is what lets the loader run close to (or past) a plain full-image decode. It needs a C
compiler and the libjpeg-turbo headers (Debian/Ubuntu: libjpeg-dev). It is optional: if
it does not build, the install still succeeds and the loader uses simplejpeg (or Pillow)
plus torch's resize, which give the same crops, only slower.
`loaders.transforms.decoder_name()` says which path is active.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "loaders._cropdecode",
    sources=["loaders/_cropdecode.c"],
    libraries=["jpeg"],
    extra_compile_args=["-O3"],
    optional=True,
)])
