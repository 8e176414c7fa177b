// Package freeport hands test servers a loopback port that stays free until
// they bind it.
//
// A port taken from a "127.0.0.1:0" listener comes from the kernel's
// ephemeral range, and once that listener closes, the kernel may give the
// same port to any outgoing connection before the server binds it: under a
// parallel test run, RabbitMQ then fails with eaddrinuse. Ports below the
// ephemeral range are never handed out that way, so Ports draws at random
// from there and keeps those it can bind.
package freeport

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
)

// lowest is the first port Ports considers: above the well-known and most
// registered service ports.
const lowest = 20000

// Ports returns n distinct ports on 127.0.0.1 that are free now and are not
// in the kernel's ephemeral range.
func Ports(n int) ([]int, error) {
	hi := ephemeralLow()
	if hi-lowest < 1000 {
		return ephemeral(n)
	}
	seen := map[int]bool{}
	var ports []int
	for tries := 0; len(ports) < n; tries++ {
		if tries > 200*n {
			return nil, fmt.Errorf("no free port in %d-%d", lowest, hi-1)
		}
		p := lowest + rand.IntN(hi-lowest)
		if seen[p] {
			continue
		}
		seen[p] = true
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		l.Close()
		ports = append(ports, p)
	}
	return ports, nil
}

// ephemeralLow is the first port of the kernel's ephemeral range.
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	var lo, hi int
	if err == nil {
		_, err = fmt.Sscan(string(b), &lo, &hi)
	}
	if err != nil || lo <= 0 {
		return 32768 // Linux's default
	}
	return lo
}

// ephemeral is the fallback on a machine whose ephemeral range starts low.
func ephemeral(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, errors.Join(errors.New("no free port"), err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
