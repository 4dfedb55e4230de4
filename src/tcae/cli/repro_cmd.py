"""`tcae repro` and `tcae demo` parsers (the work lives in tcae.repro and tcae.demo)."""

from tcae.demo import register as register_demo
from tcae.repro import register as register_repro


def register(sub) -> None:
    register_demo(sub)
    register_repro(sub)
