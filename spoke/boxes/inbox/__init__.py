"""Code that runs *inside* a box, shipped to it as text (never imported by the spoke).

:mod:`supervisor` is read by :func:`spoke.boxes.agent_launch.supervisor_source` and handed to
the box's ``python3 -c``; the spokehub package itself is never present in a box.
"""
