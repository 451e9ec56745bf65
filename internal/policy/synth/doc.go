// Package synth generates synthetic but realistic policy inputs for
// Balise's benchmarks: large domain lists with name lengths like those of
// real block lists, and a catalog-shaped set of services, groups,
// schedules and rules. Output is deterministic for a given seed.
package synth
