"""Desired kernel state and the reconciler (the contract every backend writes to):
`resources` (the `Resource` protocol and the kernel objects: links, addresses, routes,
neighbours, FDB entries, sysctls, nft tables), `nic` (moving a NIC into a bridge),
`env` (`Env`: where resources are applied), `reconciler` (`reconcile`, `pending`,
`teardown`, `Journal`). Empty on purpose: importing the package costs nothing."""
