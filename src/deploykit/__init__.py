"""deploykit: Ansible roles driven from Python for the classic scalable web stack.

The package is a thin command line (``deploykit.cli``) over an importable core:

- ``deploykit.lab``: a lab of real Debian 12 hosts (Docker containers booted with systemd, reached
  over SSH) built offline;
- ``deploykit.inventory``: inventory validation before any host is contacted;
- ``deploykit.runner``: playbooks run through ansible-runner, with progress and a structured result.
"""

__version__ = "0.1.0"
