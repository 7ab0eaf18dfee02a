"""Host integration: unmodified DSA software (accel-config, dsa_test) against siov.

``siov-run`` starts a program in a private mount namespace where a FUSE file system, fed live
by siovd's accelerator commands, shows the idxd sysfs ABI and ``/dev/dsa``, and where an
``LD_PRELOAD`` library turns MOVDIR64B/ENQCMD stores to a WQ portal into WQ_SUBMIT messages.
Everything here is a client of siovd: it imports ``siov`` and ``siov_protocol``, never ``siovd``.
"""
