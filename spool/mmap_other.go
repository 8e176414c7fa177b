//go:build !linux

package spool

import bolt "go.etcd.io/bbolt"

// dropMapped is a no-op outside Linux.
func dropMapped(*bolt.DB) {}

// dropMappedLocked is a no-op outside Linux.
func (q *Queue) dropMappedLocked() {}
