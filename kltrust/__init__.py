"""kltrust: compare the ways a policy is kept close to a reference while it learns."""

__version__ = "0.1.0"
