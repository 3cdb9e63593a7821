#!/usr/bin/env bash
# Generate and install the ddvlm_msgs interfaces (msg/) into the venv, which is the ROS prefix here.
# Recipe and pitfalls: ros-kilted-* wheels from PyPI + Debian cmake/g++ (see README, "Messages").
# Idempotent: skips the build when the installed package matches the hash of msg/.
set -euo pipefail
VENV=${VENV:-$(pwd)/.venv}
PY=$VENV/bin/python
BUILD=${BUILD:-$(pwd)/build/ddvlm_msgs}
stamp=$VENV/share/ddvlm_msgs/.source-hash
hash=$(cat msg/*.msg msg/CMakeLists.txt msg/package.xml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$hash" ]; then
  echo "ddvlm_msgs up to date"; exit 0
fi
command -v cmake >/dev/null && command -v g++ >/dev/null || {
  echo "ddvlm_msgs needs cmake and g++: apt-get install -y cmake g++ make" >&2; exit 1; }
# Pitfall 3: the wheels' exported CMake targets name the wheel build host's include dirs.
PYINC=$($PY -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
NPINC=$($PY -c 'import numpy; print(numpy.get_include())')
sed -i "s#/opt/python/cp311-cp311/include/python3.11#$PYINC#g; s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$NPINC#g" \
  "$VENV"/share/*/cmake/export_*__rosidl_generator_pyExport.cmake
# Pitfall 2: the ament index is found through the environment.
export AMENT_PREFIX_PATH=$VENV CMAKE_PREFIX_PATH=$VENV PATH=$VENV/bin:$PATH
rm -rf "$BUILD"; mkdir -p "$(dirname "$BUILD")"
cmake -S msg -B "$BUILD" -DCMAKE_INSTALL_PREFIX="$VENV" -DPython3_EXECUTABLE="$PY" \
  -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release > "$BUILD.log" 2>&1 || { tail -40 "$BUILD.log"; exit 1; }
cmake --build "$BUILD" -j2 >> "$BUILD.log" 2>&1 || { tail -40 "$BUILD.log"; exit 1; }
cmake --install "$BUILD" >> "$BUILD.log" 2>&1 || { tail -40 "$BUILD.log"; exit 1; }
echo "$hash" > "$stamp"
"$PY" -c 'from ddvlm_msgs.msg import EmotionDistribution, Utterance; print("ddvlm_msgs built:", EmotionDistribution.__name__, Utterance.__name__)'
