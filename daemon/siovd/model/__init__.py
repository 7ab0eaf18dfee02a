"""The domain model: bus, IOMMU, memory and accelerator as plain objects.

Nothing here knows about trio, sockets or logging: every verb is a synchronous call that takes
its inputs and returns an outcome (or raises :class:`~siovd.model.errors.SiovError` with an
errno), so each rule can be tested without an event loop.
"""
