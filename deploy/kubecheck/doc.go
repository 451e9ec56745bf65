// Package kubecheck holds the checks of Balise's Kubernetes manifests
// (deploy/kubernetes): every document is decoded strictly into the
// Kubernetes API type its apiVersion and kind name, and the objects are
// checked against each other and against the configs they carry.
//
// It is a module of its own so that the Kubernetes API modules, needed
// only by these checks, stay out of Balise's build. Run it with
//
//	cd deploy/kubecheck && go test ./...
package kubecheck
