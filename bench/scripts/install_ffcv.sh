#!/usr/bin/env bash
# Install FFCV 1.0.2 (fast .beton data loading) into ${PYTHON:-python}. Safe to run again.
#
# FFCV ships only as source: pip compiles its C++ part against OpenCV and libjpeg-turbo, found
# through pkg-config, with a C++ compiler. As root with apt-get, this script installs those
# system packages itself (one `apt-get update`, only when something is missing); otherwise it
# names exactly what is missing, prints the apt-get line that provides it, and exits 1.
#
# Python pins, added to what ffcv declares (it pins nothing):
#   numba>=0.64           older numba caps numpy below 2.4, so pip would downgrade numpy
#   opencv-python>=4.10   the first OpenCV wheels built for numpy 2
# numpy, torch and torchvision are held at their installed versions while pip runs.
#
# Environment: PYTHON (default: python), PIP_ARGS (extra arguments for pip install).
set -euo pipefail

PYTHON="${PYTHON:-python}"
FFCV_VERSION=1.0.2
REQUIREMENTS=("ffcv==${FFCV_VERSION}" "numba>=0.64" "opencv-python>=4.10")
me="install_ffcv.sh"

say() { printf '%s: %s\n' "$me" "$*"; }

if ! "$PYTHON" -c 'import sys' 2>/dev/null; then
    say "cannot run '$PYTHON' (set PYTHON to the interpreter the benchmark uses)"
    exit 1
fi

ffcv_ok() {
    "$PYTHON" - "$FFCV_VERSION" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
assert version("ffcv") == sys.argv[1]
import ffcv.fields, ffcv.loader, ffcv.writer  # noqa: F401  (loads libffcv, numba, cv2)
EOF
}

if ffcv_ok; then
    say "ffcv ${FFCV_VERSION} is already installed and imports; nothing to do"
    exit 0
fi

# --- system packages ---------------------------------------------------------------------
pc_dirs() {  # where .pc files live when pkg-config itself is missing
    local extra="${PKG_CONFIG_PATH:-}"
    printf '%s\n' ${extra//:/ } /usr/local/lib/pkgconfig /usr/local/share/pkgconfig \
        /usr/lib/pkgconfig /usr/share/pkgconfig /usr/lib/*-linux-gnu/pkgconfig
}
has_pc() {  # has_pc NAME: is there a pkg-config module NAME?
    if command -v pkg-config >/dev/null 2>&1; then
        pkg-config --exists "$1"
    else
        local d
        for d in $(pc_dirs); do [ -f "$d/$1.pc" ] && return 0; done
        return 1
    fi
}
has_lib() {  # has_lib SONAME: can the dynamic linker find it?
    { ldconfig -p 2>/dev/null || /sbin/ldconfig -p 2>/dev/null; } | grep -q "[[:space:]]$1 "
}

missing=()   # "debian-package|what is missing"
command -v pkg-config >/dev/null 2>&1 || missing+=("pkg-config|pkg-config (the build finds OpenCV and libjpeg-turbo with it)")
has_pc opencv4 || has_pc opencv || missing+=("libopencv-dev|OpenCV headers and opencv4.pc")
has_pc libturbojpeg || missing+=("libturbojpeg0-dev|libjpeg-turbo's TurboJPEG headers and libturbojpeg.pc")
command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 || missing+=("g++|a C++ compiler (c++ or g++)")
if ! "$PYTHON" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
    missing+=("python3-dev|Python.h for $("$PYTHON" -c 'import sys; print("python%d.%d" % sys.version_info[:2])') (a pyenv or conda Python has its own)")
fi
has_lib libGL.so.1 || missing+=("libgl1|libGL.so.1 (opencv-python's cv2 loads it)")
has_lib libgthread-2.0.so.0 || missing+=("libglib2.0-0|libgthread-2.0.so.0 (opencv-python's cv2 loads it)")

if [ "${#missing[@]}" -gt 0 ]; then
    packages=()
    for m in "${missing[@]}"; do packages+=("${m%%|*}"); done
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing system packages: ${packages[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q "${packages[@]}"
    else
        say "missing what ffcv needs to build and load:"
        for m in "${missing[@]}"; do printf '  %-18s %s\n' "${m%%|*}" "${m#*|}"; done
        sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo "
        echo "Install them (Debian/Ubuntu) with:"
        echo "  ${sudo}apt-get update && ${sudo}apt-get install -y ${packages[*]}"
        echo "then run $0 again."
        exit 1
    fi
fi

# --- ffcv --------------------------------------------------------------------------------
# Hold numpy/torch/torchvision where they are: ffcv's unpinned deps must fit around them.
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
"$PYTHON" - > "$constraints" <<'EOF'
from importlib.metadata import PackageNotFoundError, version
for name in ("numpy", "torch", "torchvision"):
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        pass
EOF
say "pip install ${REQUIREMENTS[*]} (holding: $(tr '\n' ' ' < "$constraints"))"
# shellcheck disable=SC2086
"$PYTHON" -m pip install ${PIP_ARGS:-} -c "$constraints" "${REQUIREMENTS[@]}"

if ! ffcv_ok; then
    say "ffcv installed but does not import; the error:"
    "$PYTHON" -c 'import ffcv.fields, ffcv.loader, ffcv.writer' || true
    exit 1
fi
say "ffcv ${FFCV_VERSION} installed and imports"
