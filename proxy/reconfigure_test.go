package proxy

import (
	"bytes"
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestReconfigure applies a reload to a running proxy: allowed clients,
// CONNECT ports, block-page text and the CA change at once; a client the
// new settings no longer serve loses its open tunnel at the re-decision;
// the start-only fields keep their values.
func TestReconfigure(t *testing.T) {
	_, roots, tlsPort := originTLS(t)
	port := liveOrigin(t)
	ca1, roots1 := testCA(t)
	e := startEnv(t, testSpec(), func(o *Options) {
		o.CA = ca1
		o.BlockMessage = "Message d'origine"
		o.AllowedClients = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32"), netip.MustParsePrefix("127.0.0.2/32")}
	})
	headerTimeout := e.p.cfg().HeaderTimeout

	status := func(from, url string) (int, string) {
		t.Helper()
		c, br := dialProxyFrom(t, e.addr, from)
		resp := sendGet(t, c, br, url)
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := status("127.0.0.3", "http://unlisted.test:"+port+"/"); code != 403 {
		t.Fatalf("client 127.0.0.3 before the reload = %d, want 403", code)
	}
	if code, body := status("127.0.0.1", "http://social.test:"+port+"/"); code != 403 || !strings.Contains(body, "Message d&#39;origine") {
		t.Fatalf("block page before the reload = %d, want the first message\n%s", code, body)
	}
	if _, code, _ := tlsOverTunnel(t, e.addr, "", "unlisted.test:"+tlsPort, "example.com", roots, false); code != 403 {
		t.Fatalf("CONNECT to port %s before the reload = %d, want 403", tlsPort, code)
	}
	blocked := func() (string, error) {
		tc, _, err := tlsOverTunnel(t, e.addr, "", "www.social.test:443", "www.social.test", roots1, false)
		if err != nil {
			return "", err
		}
		defer tc.Close()
		return string(tc.ConnectionState().PeerCertificates[1].Raw), nil
	}
	if _, err := blocked(); err != nil {
		t.Fatalf("block page under the first CA: %v", err)
	}
	ca2, roots2 := testCA(t)
	o := e.p.cfg().Options
	o.AllowedClients = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32"), netip.MustParsePrefix("127.0.0.3/32")}
	o.ConnectPorts = []uint16{443, mustPort(t, tlsPort)}
	o.BlockMessage = "Nouveau message"
	o.CA = ca2
	o.HeaderTimeout = time.Millisecond // start-only: ignored
	if err := e.p.Reconfigure(o); err != nil {
		t.Fatalf("Reconfigure: %v", err)
	}

	if code, _ := status("127.0.0.3", "http://unlisted.test:"+port+"/"); code != 200 {
		t.Errorf("client 127.0.0.3 after the reload = %d, want 200", code)
	}
	if code, _ := status("127.0.0.2", "http://unlisted.test:"+port+"/"); code != 403 {
		t.Errorf("client 127.0.0.2 after the reload = %d, want 403", code)
	}
	if code, body := status("127.0.0.1", "http://social.test:"+port+"/"); code != 403 || !strings.Contains(body, "Nouveau message") {
		t.Errorf("block page after the reload = %d, want the new message\n%s", code, body)
	}
	tc, code, err := tlsOverTunnel(t, e.addr, "", "unlisted.test:"+tlsPort, "example.com", roots, false)
	if err != nil || code != 200 {
		t.Errorf("CONNECT to port %s after the reload = %d %v, want a tunnel", tlsPort, code, err)
	} else {
		tc.Close()
	}
	if _, err := blocked(); err == nil {
		t.Error("block page still signed by the first CA after the reload")
	}
	tc2, _, err := tlsOverTunnel(t, e.addr, "", "www.social.test:443", "www.social.test", roots2, false)
	if err != nil {
		t.Errorf("block page under the new CA: %v", err)
	} else {
		if !bytes.Equal(tc2.ConnectionState().PeerCertificates[1].Raw, ca2.Certificate().Raw) {
			t.Error("block page chain does not carry the new CA")
		}
		tc2.Close()
	}
	if got := e.p.cfg().HeaderTimeout; got != headerTimeout {
		t.Errorf("HeaderTimeout after Reconfigure = %v, want the start value %v", got, headerTimeout)
	}
}

// TestReconfigureDropsClientTunnels: a client removed from the allowed
// clients loses its open tunnel at the next re-decision.
func TestReconfigureDropsClientTunnels(t *testing.T) {
	_, roots, tlsPort := originTLS(t)
	e := startEnv(t, testSpec(), func(o *Options) { o.ConnectPorts = []uint16{mustPort(t, tlsPort)} })
	tun, code, err := tlsOverTunnel(t, e.addr, "127.0.0.2", "unlisted.test:"+tlsPort, "example.com", roots, false)
	if err != nil || code != 200 {
		t.Fatalf("tunnel = %d %v", code, err)
	}
	defer tun.Close()
	o := e.p.cfg().Options
	o.AllowedClients = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	if err := e.p.Reconfigure(o); err != nil {
		t.Fatal(err)
	}
	if n, _ := e.p.Redecide(); n != 1 {
		t.Errorf("Redecide closed %d tunnels, want 1", n)
	}
	waitClosed(t, "tunnel of a client no longer allowed", tun, tun, 2*time.Second)
}

// TestReconfigureDropsPortTunnels: a CONNECT port removed from
// connect_ports closes the tunnels open to it at the next re-decision,
// and leaves the others.
func TestReconfigureDropsPortTunnels(t *testing.T) {
	_, roots, tlsPort := originTLS(t)
	_, roots2, tlsPort2 := originTLS(t)
	e := startEnv(t, testSpec(), func(o *Options) {
		o.ConnectPorts = []uint16{mustPort(t, tlsPort), mustPort(t, tlsPort2)}
	})
	gone, code, err := tlsOverTunnel(t, e.addr, "127.0.0.2", "unlisted.test:"+tlsPort, "example.com", roots, false)
	if err != nil || code != 200 {
		t.Fatalf("tunnel = %d %v", code, err)
	}
	defer gone.Close()
	kept, code, err := tlsOverTunnel(t, e.addr, "127.0.0.2", "unlisted.test:"+tlsPort2, "example.com", roots2, false)
	if err != nil || code != 200 {
		t.Fatalf("second tunnel = %d %v", code, err)
	}
	defer kept.Close()
	o := e.p.cfg().Options
	o.ConnectPorts = []uint16{mustPort(t, tlsPort2)}
	if err := e.p.Reconfigure(o); err != nil {
		t.Fatal(err)
	}
	if n, _ := e.p.Redecide(); n != 1 {
		t.Errorf("Redecide closed %d tunnels, want 1 (the one to the removed port)", n)
	}
	waitClosed(t, "tunnel to a port no longer allowed", gone, gone, 2*time.Second)
}

// TestReconfigureInvalid keeps the running settings when the new ones are
// invalid.
func TestReconfigureInvalid(t *testing.T) {
	e := startEnv(t, testSpec(), nil)
	o := e.p.cfg().Options
	o.ConnectPorts = []uint16{0}
	o.BlockMessage = "ne doit pas s'appliquer"
	if err := e.p.Reconfigure(o); err == nil {
		t.Fatal("Reconfigure with port 0 = nil, want an error")
	}
	if e.p.cfg().BlockMessage == o.BlockMessage {
		t.Error("an invalid reload was partly applied")
	}
}

// A reload that drops allow_destinations refuses the destination it
// exempted at the next request; one that adds deny_destinations refuses
// that network.
func TestReconfigureDestinations(t *testing.T) {
	port := liveOrigin(t)
	e := startEnv(t, testSpec(), nil)
	get := func() int {
		t.Helper()
		c, br := dialProxyFrom(t, e.addr, "127.0.0.1")
		resp := sendGet(t, c, br, "http://unlisted.test:"+port+"/")
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode
	}
	if code := get(); code != 200 {
		t.Fatalf("loopback origin with allow_destinations = %d, want 200", code)
	}
	o := e.p.cfg().Options
	o.DenyDestinations = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	if err := e.p.Reconfigure(o); err != nil {
		t.Fatal(err)
	}
	if code := get(); code != 403 {
		t.Errorf("after deny_destinations 127.0.0.0/8 = %d, want 403", code)
	}
	o.DenyDestinations = nil
	o.AllowDestinations = nil
	if err := e.p.Reconfigure(o); err != nil {
		t.Fatal(err)
	}
	if code := get(); code != 403 {
		t.Errorf("after allow_destinations removed = %d, want 403", code)
	}
	o.AllowDestinations = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	if err := e.p.Reconfigure(o); err != nil {
		t.Fatal(err)
	}
	if code := get(); code != 200 {
		t.Errorf("after allow_destinations restored = %d, want 200", code)
	}
}
