#!/bin/sh
# The demo: a Jupyter session (jupyter-server as nobody, a kernel holding
# state, a websocket client) is checkpointed, killed and restored, then
# live-migrated to a second emulated machine, while the websocket stays open.
# See scripts/demo.py.
set -eu
exec /usr/bin/python3 "$(dirname "$0")/demo.py" "$@"
