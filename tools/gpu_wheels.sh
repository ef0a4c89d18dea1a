#!/usr/bin/env bash
# The packages tools/gpu_check.sh needs that the GPU machines' image lacks (Python 3.12 there, no network),
# downloaded here as wheels into .whl/ (ignored by git; carried to the machine, 64 MiB at most).
set -eu
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >>.git/info/exclude
PLAT="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any"
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLAT -d .whl \
    pyfaidx dask distributed dask-cuda tangermeme==1.6.0 memelite nbclient nbformat jupyter-client jupyter-core \
    ipykernel comm debugpy matplotlib-inline tornado pyzmq traitlets fastjsonschema jsonschema \
    jsonschema-specifications referencing rpds-py platformdirs nest-asyncio pyjaspar==4.0.0 biopython \
    partd locket tblib zict pynvml
du -sh .whl
