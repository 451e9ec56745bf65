package main

import "context"

// startProxy starts the explicit and transparent proxies of [proxy],
// reading the policy from rt.policy, and stops them when ctx ends. It
// returns an error when a listener cannot be bound.
//
// This build has no proxy front-end.
func startProxy(ctx context.Context, rt *runtime) error {
	return nil
}
