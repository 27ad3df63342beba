#!/bin/bash
# The image's CMD (`bash /usr/bin/start.sh`): run the executor on YMIR's /in and /out.
# YMIR may start the container as any uid with no HOME; everything that wants a writable home gets /tmp.
set -euo pipefail
if [ -z "${HOME:-}" ] || [ "${HOME}" = "/" ] || [ ! -w "${HOME}" ]; then
    export HOME=/tmp
fi
APP_DIR="${YMIR_APP_DIR:-/app}"
cd "${APP_DIR}"
exec python3 "${APP_DIR}/start.py" "$@"
