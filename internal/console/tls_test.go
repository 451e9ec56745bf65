package console

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// newTLSServer serves h over TLS on loopback.
func newTLSServer(t *testing.T, h http.Handler) *httptest.Server {
	srv := httptest.NewUnstartedServer(h)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}
