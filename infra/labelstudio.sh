#!/usr/bin/env bash
# Label Studio for labelloop from a checkout: the script the labelloop package ships
# (labelloop/resources/labelstudio.sh; its header lists the commands and knobs), with its venv and data
# in this repository (./.venv-labelstudio, ./.labelstudio) unless LS_HOME says otherwise.
#
#   infra/labelstudio.sh {install|start|token|up|status|stop|url}
#   export LABEL_STUDIO_API_KEY="$(infra/labelstudio.sh token)"
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LS_HOME="${LS_HOME:-$ROOT}" exec bash "$ROOT/labelloop/resources/labelstudio.sh" "$@"
