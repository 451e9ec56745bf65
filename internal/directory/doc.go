// Package directory asks the institution's directory (Active Directory or
// OpenLDAP) which groups a user belongs to, and checks a user's password.
//
// A Directory keeps one TLS connection to the directory, bound as a
// service account and redialled lazily when it breaks. Only LDAPS and
// ldap:// with StartTLS are accepted: the service password and the
// users' passwords never cross the network in clear.
//
// Groups answers from a bounded cache: memberships for cache_ttl, unknown
// users for a shorter while, concurrent lookups of one user made once.
// When the directory cannot be reached, a user's last known memberships
// keep being served (counted as stale) rather than dropping the person
// into the groups of the network alone; a user never seen gets an error
// within the configured timeout. Cached answers without any I/O, for
// callers that must not wait.
//
// Active Directory ("ad") groups are found with one
// LDAP_MATCHING_RULE_IN_CHAIN query, which includes nested groups, plus
// the user's primary group (Domain Users); OpenLDAP groups are the user's
// memberOf values. Every group is returned both by its CN and by its DN,
// so that a policy's directory_groups can name either.
//
// The directory is never asked on a per-query path: the proxy and the
// console ask it when a person authenticates, and the DNS filter uses the
// address bindings that result.
package directory
