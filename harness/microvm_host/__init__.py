"""An emulated host where real microVMs boot (QEMU's software CPU with nested AMD SVM), for machines
without nested virtualization; ``scripts/microvm-host`` runs it (``help.txt``: its ``--help``).

- ``logic``     the pure logic: cache keys, console and heartbeat verdicts, the guest's environment
- ``cache``     the cache folder, this machine's packages and Debian mirror, the guest's wheels
- ``checkout``  this checkout as the guest gets it
- ``disk``      the guest's disk, built from Debian packages when its inputs change
- ``image``     the image to boot, saved by id, and the guest registry's storage holding it
- ``share``     the 9p share of one run (its init: ``guest-init.sh``) and the runs kept
- ``boot``      one boot of QEMU and the watch that ends it with a verdict
- ``cli``       the command line: run, e2e, build; retries and exit codes
"""
