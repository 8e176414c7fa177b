// Package packaging holds forest-cloud's Debian packaging rather than Go
// code: the hardened systemd unit forest-cloud.service, the .deb build
// (package.sh, debian/) and their tests. It lives beside the cloud command
// because firmware/ is what goes onto a device; both packages share the
// version scheme (firmware/package.sh version).
//
// The tests are the proof: systemd-analyze verify and security on the unit,
// the amd64 .deb built and installed into a throwaway root with dpkg --root
// (the installed binary checks the installed config), removed and purged,
// and the arm64 .deb cross-built and checked to hold an AArch64 binary.
package packaging
