"""`make lab`'s JupyterLab settings (`jupyter lab --config=jupyter_lab_config.py`): the kernels'
sockets as the headless runner makes them, CurveZMQ-encrypted where pyzmq can, else IPC files only
you can open (deepfake_detector.notebook.kernel_manager_config), so that ipykernel has no cause
for its "Kernel is running over TCP without encryption" warning. Jupyter runs this file with
`get_config` defined."""
import sys

from deepfake_detector.notebook import kernel_manager_config, kernel_transport_note

c = get_config()  # noqa: F821
c.merge(kernel_manager_config(server=True))
if note := kernel_transport_note():
    print(note, file=sys.stderr)
