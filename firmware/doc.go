// Package firmware holds what goes onto a device and into a deployment
// rather than Go code: the hardened systemd unit forest-agent.service, the
// default agent.yaml, the .deb build (package.sh, debian/), the RabbitMQ
// definitions (rabbitmq/definitions.json) and the emulated arm64 check
// (qemu-check.sh). README.md says how to install, upgrade and remove.
//
// The package's tests are the proof: they run systemd-analyze verify and
// security on the unit, import the definitions into a real RabbitMQ and
// exercise each user's permissions, build the amd64 .deb and install it into
// a throwaway root, and run the agent under the kernel's
// memory-deny-write-execute policy. They run sequentially; nothing here
// starts goroutines of its own beyond the AMQP client's.
package firmware
