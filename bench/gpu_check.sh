#!/usr/bin/env bash
# One prepared GPU check (issue 20): FPS of folded / unfolded / YOLOv8 at n, s, l (PyTorch fp16, ONNX Runtime CUDA,
# TensorRT when present), 50 training steps with the mechanisms (AMP, teacher overhead, peak memory) and the DDP
# launch of our trainer. Writes bench/out/gpu_check/gpu_check.{json,md} (or --out DIR). At most 8 minutes.
#
#   bench/gpu_check.sh [--dry-run] [--out DIR] [...]   # --dry-run: CPU, tiny sizes (a test runs it)
#   bench/gpu_check.sh --pack [DIR]                    # here, with a registry: wheels for a bare GPU image
#
# On the GPU machine, wheels in bench/out/gpu_wheels (carry that folder, <= 64 MiB) are installed first, offline,
# for whatever that image lacks (torch, torchvision and onnxruntime are expected to be there).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEELS="${MEDROV_GPU_WHEELS:-$ROOT/bench/out/gpu_wheels}"
PY="${PYTHON:-python}"
# the packages medrov and ultralytics import that a CUDA torch image may lack (no torch/torchvision here); measured
# 58 MiB (polars-runtime-32 alone is 54 MB, ultralytics needs it to save checkpoints). onnx + onnxslim (9 MiB more)
# would pass the 64 MiB limit: without them the ONNX parts are reported as skipped. MEDROV_GPU_PACK overrides.
read -r -a PACK <<< "${MEDROV_GPU_PACK:-ultralytics ultralytics-thop pydantic pydantic-core typer polars polars-runtime-32 open-clip-torch ftfy cloudpickle}"
MODULES=(ultralytics polars pydantic typer open_clip ftfy cloudpickle yaml cv2 scipy matplotlib pandas pyarrow onnx onnxslim onnxruntime)

if [[ "${1:-}" == "--pack" ]]; then
  dest="${2:-$WHEELS}"
  mkdir -p "$dest"
  specs=()
  for p in "${PACK[@]}"; do
    v="$("$PY" -c "import importlib.metadata as m; print(m.version('$p'))" 2>/dev/null || true)"
    specs+=("$p${v:+==$v}")
  done
  "$PY" -m pip download --no-deps --only-binary=:all: -d "$dest" "${specs[@]}"
  size=$(du -sm "$dest" | cut -f1)
  echo "gpu_check: ${size} MiB of wheels in $dest (limit 64)"
  [[ "$size" -le 64 ]] || { echo "gpu_check: too big to carry; drop what the GPU image has" >&2; exit 1; }
  exit 0
fi

if [[ -d "$WHEELS" ]] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  missing=()
  for w in "$WHEELS"/*.whl; do
    name="$(basename "$w" | cut -d- -f1)"
    "$PY" -c "import importlib.metadata as m; m.version('${name}')" 2>/dev/null || missing+=("$w")
  done
  if (( ${#missing[@]} )); then
    echo "gpu_check: installing ${#missing[@]} carried wheels"
    "$PY" -m pip install --no-index --no-deps --quiet "${missing[@]}"
  fi
fi

# say up front what this image lacks (the first run on a new image tells what to pack)
"$PY" - "${MODULES[@]}" <<'PYEOF' || true
import importlib.util, sys
missing = [m for m in sys.argv[1:] if importlib.util.find_spec(m) is None]
print("gpu_check: missing modules: " + (", ".join(missing) if missing else "none"), flush=True)
PYEOF

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export YOLO_OFFLINE=1 YOLO_CONFIG_DIR="${YOLO_CONFIG_DIR:-$ROOT/.ultralytics}" HF_HUB_OFFLINE=1 \
  MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1
# 8 minutes in all: the Python side keeps its own budget (--budget-s) so that it writes its JSON before this ends
exec timeout --kill-after=10 480 "$PY" "$ROOT/bench/gpu_check.py" "$@"
