package main

import "context"

// startDNS starts the DNS filter on the [dns] listen addresses, reading
// the policy from rt.policy, and stops it when ctx ends. It returns an
// error when a listener cannot be bound.
//
// This build has no DNS front-end.
func startDNS(ctx context.Context, rt *runtime) error {
	return nil
}
