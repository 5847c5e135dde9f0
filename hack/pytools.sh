#!/usr/bin/env bash
# The Python tools the tests run against MemoBuild's outputs, from PyPI, in a venv of their own:
# kubernetes-validate (the Job manifest against Kubernetes' schemas) and schemathesis (the
# server's API against its OpenAPI document).
#
#   hack/pytools.sh DIR    create or update the venv in DIR, print DIR/bin
#
# Versions are pinned so a run is repeatable; an existing venv with them is reused as is.
set -eu -o pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $# == 1 ]] || { echo "usage: $0 DIR" >&2; exit 2; }
VENV="$(abs_dir "$1")"
REQUIREMENTS=(kubernetes-validate==1.37.0 schemathesis==4.32.5)

want="$(printf '%s\n' "${REQUIREMENTS[@]}")"
if [[ ! -x "$VENV/bin/python" || "$(cat "$VENV/requirements.txt" 2>/dev/null)" != "$want" ]]; then
	log "installing ${REQUIREMENTS[*]} into $VENV"
	python3 -m venv "$VENV"
	"$VENV/bin/pip" install --quiet --disable-pip-version-check "${REQUIREMENTS[@]}" >&2
	printf '%s\n' "$want" >"$VENV/requirements.txt"
fi
echo "$VENV/bin"
