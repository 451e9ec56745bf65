// Package console is Balise's officer console: a web application on a
// listener of its own where the information-security officer reviews,
// approves, denies, revokes and extends exception requests, searches the
// register and prints the committee's report, and where auditors read.
//
// Pages are rendered on the server (html/template, embedded assets, no
// JavaScript); a JSON API under /api/v1/ answers scripts and ticketing
// tools with the same handlers. Sign-in goes through the directory (an
// LDAP bind as the user, roles from directory users or groups) or local
// argon2id accounts. Failed sign-ins are throttled per account and per
// source before the directory is asked, so that nobody can lock an
// officer's directory account through the console. Sessions live in
// memory: random identifiers in Secure (under TLS), HttpOnly,
// SameSite=Strict cookies, an idle timeout, and a CSRF token required on
// every state change. Every decision is recorded in the register's audit
// chain under the signed-in officer's name, and an officer never decides
// their own request.
package console
