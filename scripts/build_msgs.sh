#!/usr/bin/env bash
# Generate and install an interface package into the venv, which is the ROS prefix here.
#   scripts/build_msgs.sh                          ddvlm_msgs from msg/
#   scripts/build_msgs.sh third_party/hri_msgs     the vendored ROS4HRI subset (only if hri_msgs does not import)
#   scripts/build_msgs.sh third_party/whisper_msgs the vendored whisper_ros subset (the same)
#   scripts/build_msgs.sh third_party/bond         bond's messages (nav2's lifecycle bond; the same)
# Recipe and pitfalls: ros-kilted-* (or ros-jazzy-*) wheels from PyPI + Debian cmake/g++ (see README, "Messages").
# Idempotent: skips the build when the installed package matches the hash of its sources.
set -euo pipefail
SRC=${1:-msg}
PKG=$(sed -n 's#.*<name>\(.*\)</name>.*#\1#p' "$SRC/package.xml" | head -1)
VENV=${VENV:-$(pwd)/.venv}
PY=$VENV/bin/python
BUILD=${BUILD:-$(pwd)/build/$PKG}
stamp=$VENV/share/$PKG/.source-hash
hash=$(find "$SRC" -maxdepth 2 \( -name '*.msg' -o -name '*.srv' -o -name CMakeLists.txt -o -name package.xml \) | LC_ALL=C sort | xargs cat | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$hash" ]; then
  echo "$PKG up to date"; exit 0
fi
if [ "$SRC" != msg ] && [ ! -f "$stamp" ] && "$PY" -c "import $PKG.msg" 2>/dev/null; then
  echo "$PKG: the real package imports; the vendored copy is not built"; exit 0
fi
command -v cmake >/dev/null && command -v g++ >/dev/null || {
  echo "$PKG needs cmake and g++: apt-get install -y cmake g++ make" >&2; exit 1; }
# Pitfall 3: the wheels' exported CMake targets name the wheel build host's include dirs.
PYINC=$($PY -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
NPINC=$($PY -c 'import numpy; print(numpy.get_include())')
sed -E -i "s#/opt/python/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+#$PYINC#g; s#/opt/python/cp3[0-9]+-cp3[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/_core/include#$NPINC#g" \
  "$VENV"/share/*/cmake/export_*__rosidl_generator_pyExport.cmake
# Pitfall 2: the ament index is found through the environment.
export AMENT_PREFIX_PATH=$VENV CMAKE_PREFIX_PATH=$VENV PATH=$VENV/bin:$PATH
rm -rf "$BUILD"; mkdir -p "$(dirname "$BUILD")"
cmake -S "$SRC" -B "$BUILD" -DCMAKE_INSTALL_PREFIX="$VENV" -DPython3_EXECUTABLE="$PY" \
  -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release > "$BUILD.log" 2>&1 || { tail -40 "$BUILD.log"; exit 1; }
cmake --build "$BUILD" -j2 >> "$BUILD.log" 2>&1 || { tail -40 "$BUILD.log"; exit 1; }
cmake --install "$BUILD" >> "$BUILD.log" 2>&1 || { tail -40 "$BUILD.log"; exit 1; }
echo "$hash" > "$stamp"
"$PY" -c "import importlib, importlib.util as u, $PKG.msg as m; s = importlib.import_module('$PKG.srv') if u.find_spec('$PKG.srv') else None
print('$PKG built:', ', '.join(n for x in (m, s) if x for n in dir(x) if n[0].isupper() and not n.endswith(('_Request', '_Response', '_Event'))))"
