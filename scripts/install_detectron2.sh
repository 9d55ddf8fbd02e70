#!/usr/bin/env bash
# Install detectron2 0.6 into the active Python environment (idempotent).
#
# detectron2 is not published on PyPI under its own name, so e3va-d2 provides
# it with this script.  Routes, in order:
#
#   1. `import detectron2` already works: keep it (a full build with the
#      compiled extension, or the pure-Python build from route 3) and exit 0.
#      A missing or outdated `_C` stand-in of a pure-Python build is refreshed.
#   2. E3VA_D2_BUILD_FROM_SOURCE=1: `pip install --no-build-isolation SOURCE`,
#      the official route (C++/CUDA ops; needs a compiler, torch already
#      installed, and for GPU ops the CUDA toolkit).  SOURCE is
#      $E3VA_D2_SOURCE: a pip-installable git URL or a local checkout,
#      default git+https://github.com/facebookresearch/detectron2.git
#   3. Default: the pure-Python build.  Downloads the `pb1-detectron2==0.6`
#      sdist from PyPI (the official v0.6 Python sources without the C++
#      sources), checks its sha256, and pip-installs its Python tree as the
#      distribution `detectron2` 0.6 without the compiled extension.  The
#      stand-in scripts/detectron2_c_standin.py is installed as
#      `detectron2/_C.py`, so imports work and the few C++-only ops raise a
#      clear error.  `pip show detectron2` / `pip uninstall detectron2` work.
#
# Every route finishes by installing opencv-python-headless if no `cv2` is
# importable (detectron2's visualizer and PointRend import it).
#
# Environment:
#   PYTHON                      interpreter to install into (default: `python`
#                               on PATH, else `python3`)
#   E3VA_D2_BUILD_FROM_SOURCE   1 = route 2 (default 0)
#   E3VA_D2_SOURCE              source for route 2 (see above)
#   E3VA_D2_CACHE               cache dir (default ~/.cache/e3va_d2); the sdist
#                               is kept in $E3VA_D2_CACHE/downloads, so a copy
#                               placed there is used offline (after its sha256
#                               is checked)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STANDIN="$SCRIPT_DIR/detectron2_c_standin.py"

if [[ -z "${PYTHON:-}" ]]; then
    if command -v python >/dev/null 2>&1; then PYTHON=python; else PYTHON=python3; fi
fi

SDIST_NAME="pb1-detectron2-0.6.tar.gz"
SDIST_URL="https://files.pythonhosted.org/packages/60/26/48f5bbb7ee492696a21da23303daeecdfe3942c498a70d34108acf63b2bd/$SDIST_NAME"
SDIST_SHA256="5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
CACHE_DIR="${E3VA_D2_CACHE:-${HOME:-/tmp}/.cache/e3va_d2}"
DOWNLOAD_DIR="$CACHE_DIR/downloads"
DEFAULT_SOURCE="git+https://github.com/facebookresearch/detectron2.git"

# Runtime dependencies of detectron2 0.6 on a current stack.
D2_REQUIREMENTS=(
    "Pillow>=7.1,<10"             # detectron2 0.6 uses Image.LINEAR (removed in Pillow 10)
    "matplotlib"
    "pycocotools>=2.0.2"
    "termcolor>=1.1"
    "yacs>=0.1.8"
    "tabulate"
    "cloudpickle"
    "tqdm>4.29.0"
    "tensorboard"
    "fvcore>=0.1.5,<0.1.6"
    "iopath>=0.1.7,<0.1.10"
    "omegaconf>=2.1"
    "hydra-core>=1.1"
    "black"                       # LazyConfig.save formats with black
    "shapely"                     # crops on polygon annotations
    "setuptools>=77.0.3,<81"      # pkg_resources (model_zoo)
)

log() { echo "[install_detectron2] $*"; }
die() {
    echo "[install_detectron2] ERROR: $*" >&2
    exit 1
}

# pip, minus the harmless "Location 'file:///...' is ignored" lines some pip
# configurations print for every package; everything else (errors) is shown.
pip_run() {
    "$PYTHON" -m pip "$@" 2>&1 |
        { grep -v -E "^WARNING: Location '[^']*' is ignored: it is neither a file nor a directory\.?$" || true; }
}

sha256_of() {
    "$PYTHON" - "$1" <<'EOF'
import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
print(h.hexdigest())
EOF
}

download() { # url dest
    if command -v curl >/dev/null 2>&1; then
        curl -fsSL --retry 3 -o "$2" "$1"
    else
        "$PYTHON" - "$1" "$2" <<'EOF'
import shutil, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=120) as r, open(sys.argv[2], "wb") as f:
    shutil.copyfileobj(r, f)
EOF
    fi
}

# Prints "<state>\t<detail>" describing the detectron2 of $PYTHON:
#   absent | broken | full | standin | foreign-py | no-c | full-broken
probe() {
    "$PYTHON" - <<'EOF'
import importlib.machinery, importlib.util, os, sys
try:
    spec = importlib.util.find_spec("detectron2")
except Exception as e:  # noqa
    spec = None
if spec is None:
    print("absent\t-")
    sys.exit(0)
try:
    import detectron2
except Exception as e:
    print(f"broken\t{type(e).__name__}: {e}".replace("\n", " "))
    sys.exit(0)
where = f"detectron2 {getattr(detectron2, '__version__', '?')} at {os.path.dirname(detectron2.__file__)}"
c_spec = importlib.util.find_spec("detectron2._C")
if c_spec is None or not c_spec.origin:
    print(f"no-c\t{where}")
    sys.exit(0)
compiled = c_spec.origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
try:
    import detectron2._C as C
except Exception as e:
    state = "full-broken" if compiled else "broken"
    print(f"{state}\t{where}: detectron2._C ({c_spec.origin}) fails to import: "
          f"{type(e).__name__}: {e}".replace("\n", " "))
    sys.exit(0)
try:
    is_standin = getattr(C, "IS_STANDIN", False) is True
except Exception:  # e.g. a hand-written stand-in whose __getattr__ raises
    is_standin = False
if compiled:
    print(f"full\t{where} (compiled extension {os.path.basename(c_spec.origin)})")
elif is_standin:
    print(f"standin\t{where}\t{c_spec.origin}")
else:
    print(f"foreign-py\t{where}\t{c_spec.origin}")
EOF
}

# detectron2 imports cv2 in a few places (utils.visualizer, PointRend's color
# augmentation) but, like upstream, does not depend on it; add the headless
# build only when no OpenCV is importable (a GUI opencv-python is kept).
ensure_opencv() {
    if ! "$PYTHON" -c "import cv2" >/dev/null 2>&1; then
        log "no OpenCV (cv2) found: installing opencv-python-headless"
        pip_run install -q opencv-python-headless || die "pip install opencv-python-headless failed"
    fi
}

# Route 1 wins over route 2: say so when a source build was asked for.
hint_source_build() {
    if [[ "${E3VA_D2_BUILD_FROM_SOURCE:-0}" == 1 ]]; then
        log "E3VA_D2_BUILD_FROM_SOURCE=1 ignored because detectron2 is already installed; to replace it: $PYTHON -m pip uninstall -y detectron2, then run this script again"
    fi
}

verify_or_die() {
    local state
    state="$(probe)" || die "could not inspect the detectron2 installation of $PYTHON (see the error above)"
    case "${state%%$'\t'*}" in
        full) log "detectron2 installed: full build: $(cut -f2 <<<"$state")" ;;
        standin) log "detectron2 installed: pure-Python build (no compiled ops): $(cut -f2 <<<"$state")" ;;
        *) die "detectron2 does not work after installing it: $state" ;;
    esac
}

"$PYTHON" -c "import sys; assert sys.version_info >= (3, 8)" 2>/dev/null ||
    die "'$PYTHON' is not a working Python >= 3.8 (set PYTHON=/path/to/python)"
log "python: $("$PYTHON" -c 'import sys; print(sys.executable)')"

# ---- route 1: keep a working detectron2 -------------------------------------
STATE="$(probe)" || die "could not inspect the detectron2 installation of $PYTHON (see the error above)"
KIND="${STATE%%$'\t'*}"
DETAIL="$(cut -f2 <<<"$STATE")"
case "$KIND" in
    full)
        log "keeping existing detectron2: full build with the compiled extension: $DETAIL"
        hint_source_build
        ensure_opencv
        exit 0
        ;;
    standin | foreign-py | no-c)
        c_file="$(cut -f3 <<<"$STATE")"
        if [[ "$KIND" == standin ]] && cmp -s "$STANDIN" "$c_file"; then
            log "keeping existing detectron2: pure-Python build with e3va-d2's _C stand-in: $DETAIL"
            hint_source_build
            ensure_opencv
            exit 0
        fi
        pkg_dir="$("$PYTHON" -c 'import detectron2, os; print(os.path.dirname(detectron2.__file__))')"
        case "$KIND" in
            standin) why="refreshing its outdated _C stand-in" ;;
            foreign-py) why="replacing its non-e3va-d2 pure-Python _C ($c_file) with e3va-d2's stand-in" ;;
            no-c) why="it has no _C module: adding e3va-d2's stand-in" ;;
        esac
        cp "$STANDIN" "$pkg_dir/_C.py" || die "cannot write $pkg_dir/_C.py"
        log "keeping existing detectron2 (pure-Python build), $why: $DETAIL"
        verify_or_die
        hint_source_build
        ensure_opencv
        exit 0
        ;;
    full-broken)
        die "existing detectron2 has a compiled extension that does not load (often a build for another torch version): $DETAIL
Rebuild it, or remove it with \`$PYTHON -m pip uninstall -y detectron2\` and run this script again."
        ;;
    broken)
        die "detectron2 is installed but \`import detectron2\` fails: $DETAIL
Fix the error above (torch must be installed first), or remove it with \`$PYTHON -m pip uninstall -y detectron2\` and run this script again."
        ;;
    absent) ;;
    *) die "unexpected probe result: $STATE" ;;
esac

if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    die "torch is not importable with $PYTHON; install torch and torchvision first (e.g. pip install torch==2.14.1 torchvision==0.29.1)"
fi

# ---- route 2: official source build -----------------------------------------
if [[ "${E3VA_D2_BUILD_FROM_SOURCE:-0}" == 1 ]]; then
    src="${E3VA_D2_SOURCE:-$DEFAULT_SOURCE}"
    log "E3VA_D2_BUILD_FROM_SOURCE=1: building detectron2 with its C++/CUDA ops from $src (this takes a while)"
    pip_run install -q "setuptools>=77.0.3,<81" wheel
    pip_run install --no-build-isolation "$src" ||
        die "building detectron2 from $src failed; see https://detectron2.readthedocs.io/en/latest/tutorials/install.html"
    verify_or_die
    ensure_opencv
    exit 0
fi

# ---- route 3: pure-Python build from the pb1-detectron2 0.6 sdist -----------
mkdir -p "$DOWNLOAD_DIR"
sdist="$DOWNLOAD_DIR/$SDIST_NAME"
if [[ -f "$sdist" ]]; then
    if [[ "$(sha256_of "$sdist")" == "$SDIST_SHA256" ]]; then
        log "using cached $sdist"
    else
        log "cached $sdist has a wrong sha256; downloading it again"
        rm -f "$sdist"
    fi
fi
if [[ ! -f "$sdist" ]]; then
    log "downloading $SDIST_URL"
    download "$SDIST_URL" "$sdist.part" || {
        rm -f "$sdist.part"
        die "could not download $SDIST_URL (no access to files.pythonhosted.org?). Put a copy of $SDIST_NAME (sha256 $SDIST_SHA256) in $DOWNLOAD_DIR and run again."
    }
    got="$(sha256_of "$sdist.part")"
    if [[ "$got" != "$SDIST_SHA256" ]]; then
        rm -f "$sdist.part"
        die "sha256 mismatch for $SDIST_URL: expected $SDIST_SHA256, got $got. Refusing to install it."
    fi
    mv "$sdist.part" "$sdist"
fi

TMP="$(mktemp -d "${TMPDIR:-/tmp}/e3va_d2_detectron2.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

"$PYTHON" - "$sdist" "$TMP/src" <<'EOF'
import sys, tarfile
with tarfile.open(sys.argv[1]) as tf:
    if hasattr(tarfile, "data_filter"):
        tf.extractall(sys.argv[2], filter="data")
    else:
        tf.extractall(sys.argv[2])
EOF
src_root="$TMP/src/pb1-detectron2-0.6"
[[ -f "$src_root/detectron2/__init__.py" && -d "$src_root/detectron2/model_zoo/configs" ]] ||
    die "unexpected sdist layout in $sdist"

# Stage a tiny package "detectron2" 0.6: the Python tree, the three projects
# that detectron2's own setup.py maps into detectron2.projects.*, the model zoo
# configs as package data, our _C stand-in, and no extension modules.
pkg="$TMP/pkg"
mkdir -p "$pkg/projects"
cp -r "$src_root/detectron2" "$pkg/"
cp "$src_root/LICENSE" "$pkg/"
for proj in PointRend/point_rend DeepLab/deeplab Panoptic-DeepLab/panoptic_deeplab; do
    mkdir -p "$pkg/projects/${proj%/*}"
    cp -r "$src_root/projects/$proj" "$pkg/projects/$proj"
done
cp "$STANDIN" "$pkg/detectron2/_C.py"
find "$pkg" -name '__pycache__' -prune -exec rm -rf {} +

cat >"$pkg/pyproject.toml" <<'EOF'
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"
EOF

{
    echo "# Generated by e3va-d2 scripts/install_detectron2.sh"
    echo "import glob, os"
    echo "from setuptools import find_packages, setup"
    echo ""
    echo "PROJECTS = {"
    echo "    'detectron2.projects.point_rend': 'projects/PointRend/point_rend',"
    echo "    'detectron2.projects.deeplab': 'projects/DeepLab/deeplab',"
    echo "    'detectron2.projects.panoptic_deeplab': 'projects/Panoptic-DeepLab/panoptic_deeplab',"
    echo "}"
    echo "zoo = 'detectron2/model_zoo'"
    echo "configs = sorted("
    echo "    os.path.relpath(p, zoo)"
    echo "    for p in glob.glob(os.path.join(zoo, 'configs', '**', '*'), recursive=True)"
    echo "    if os.path.isfile(p)"
    echo ")"
    echo "setup("
    echo "    name='detectron2',"
    echo "    version='0.6',"
    echo "    description='detectron2 0.6 Python sources without the compiled extension'"
    echo "    ' (pure-Python build installed by e3va-d2; detectron2._C is a stand-in)',"
    echo "    url='https://github.com/facebookresearch/detectron2',"
    echo "    author='FAIR',"
    echo "    license='Apache-2.0',"
    echo "    packages=find_packages(include=['detectron2', 'detectron2.*']) + list(PROJECTS),"
    echo "    package_dir=PROJECTS,"
    echo "    package_data={'detectron2.model_zoo': configs},"
    echo "    python_requires='>=3.8',"
    echo "    install_requires=["
    for req in "${D2_REQUIREMENTS[@]}"; do
        echo "        '$req',"
    done
    echo "    ],"
    echo "    zip_safe=False,"
    echo ")"
} >"$pkg/setup.py"

log "installing detectron2 0.6 (pure Python, no compiled extension) and its dependencies"
pip_run install -q "$pkg" || die "pip install of the staged detectron2 package failed (see the errors above)"
verify_or_die
ensure_opencv
log "done. Not available in this build: rotated boxes / nms_rotated / ROIAlignRotated, deformable conv, the C++ COCO evaluator (use COCOEvaluator(..., use_fast_impl=False)). For those: pip uninstall -y detectron2 && E3VA_D2_BUILD_FROM_SOURCE=1 $0"
