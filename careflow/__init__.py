"""Careflow: after-sales tickets and customer revisits on BPMN (SpiffWorkflow).

This package is the composition root: the ``careflow`` command line, which wires the
``engine`` library, the ``plugins`` and the ``web`` application together.
"""

__version__ = "0.1.0"
