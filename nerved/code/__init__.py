"""User code as nerve handles it, one job per module: a package read from disk
(:mod:`~nerved.code.reading`, in the master), imported from its snapshot
(:mod:`~nerved.code.importing`, in a worker), the snapshot of the accepted code and the
import check's child (:mod:`~nerved.code.packages`), and ``nerved check``
(:mod:`~nerved.code.check`).
"""
