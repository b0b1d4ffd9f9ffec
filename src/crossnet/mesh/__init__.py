"""The security foundation of `crossnet launch` (issue 13): a cluster CA
(`crossnet.mesh.pki`), join tokens that pin that CA (`crossnet.mesh.token`) and the
join handshake over HTTPS (`crossnet.mesh.join`), the state-dir layout
(`crossnet.mesh.state`). See docs/mesh.md.

`cryptography` is imported only inside the functions that need it."""
