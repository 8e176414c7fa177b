//go:build !nodynamic

package encode

const nodynamic = false
