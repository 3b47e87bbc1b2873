"""The benchmark: ws-edge, python-socketio and a bare floor, side by side in one run."""
