"""The lab: boot a kernel under emulated EFI firmware (QEMU + OVMF) and capture its boot.

This is how memledger checks a kernel before it rolls out, and how its own test suite
meets real kernels. The modules keep I/O at the edges:

* :mod:`.bootargs` and :mod:`.matrix` are pure: kernel command lines and the boot matrix;
* :mod:`.handback` is pure: it decodes the capture the guest sends back;
* :mod:`.initramfs`, :mod:`.firmware`, :mod:`.kernels`, :mod:`.qemu`, :mod:`.accel` and
  :mod:`.boot` run programs and touch files;
* :mod:`.guest` builds the Debian guest image (debootstrap) with memledger installed under
  systemd, and :mod:`.guestvm` drives it through the QEMU guest agent (the live-collection
  test in tests/e2e).
"""
