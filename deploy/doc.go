// Package deploy holds what operators install Balise with: the systemd unit,
// the container image recipe, the Kubernetes manifests, the Prometheus
// scrape configuration and alerting rules and the Grafana dashboard. Its Go
// code is the single definition of how a release binary is built, shared by
// the container recipe and the end-to-end tests, and its tests check every
// deployment file with the tool that will read it.
package deploy
