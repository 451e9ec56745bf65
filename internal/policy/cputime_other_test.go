//go:build !linux

package policy_test

func threadCPU() (int64, bool) { return 0, false }
