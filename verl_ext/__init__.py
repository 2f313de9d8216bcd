"""hpt-verl extensions to verl 0.9.1.

Everything here plugs into verl through its own registries (platform, rollout replica,
rollout adapter, policy loss); nothing in verl is copied or patched on disk.
``verl_ext.plugins`` is the single module that performs the registrations; it is imported in
every process (driver, TaskRunner, Ray workers) through ``VERL_USE_EXTERNAL_MODULES``.
"""

__version__ = "0.1.0"
