"""Container runtimes: `spec` resolves a CONTAINER argument (`name`, `/path/to/netns`,
`pid:N`, `podman:NAME`, `docker:NAME`) to a network namespace; `engines` asks podman or
Docker through their API (imported by `spec.resolve` only for those forms). Empty on
purpose: importing the package costs nothing."""
