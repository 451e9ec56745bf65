// Command policymem measures the policy engine's memory and load time
// with a large synthetic list: it builds N distinct domain names of
// realistic lengths (about 18 characters), compiles them with a
// catalog-shaped policy, and prints the heap the compiled policy holds
// per listed domain and the time New took.
//
//	go run ./tests/bench/policymem [-n 1000000] [-services 150]
package main
